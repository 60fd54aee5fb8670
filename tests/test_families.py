"""One table over the families: each row converts a tiny upstream-format file through the CLI
and matches the torch reference's outputs, generates PNGs of the right size from an alias whose
files sit in a local hub cache (HF_HUB_OFFLINE=1), and refuses another family's checkpoint.
A new family is one row. Family-specific numerics stay in the family's own test file."""

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import test_dit
import test_maskgit
from dit_files import (TINY_CONFIG as DIT_CONFIG, add_folders_to_hub_cache, save_diffusers_pipeline,
                       save_pt, save_vae, tiny_diffusers_dit, tiny_dit, tiny_vae)
from hubcache import add_to_hub_cache, offline_env
from llamagen_files import TINY_CONFIG as LLAMAGEN_CONFIG, save_gpt, save_vq, tiny_gpt, tiny_vq
from mlx_imgen.cli.app import app
from mlx_imgen.pipeline import Pipeline

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny upstream checkpoints of every family, the torch models they hold, and tokenizers."""
    root = tmp_path_factory.mktemp("families")
    gpt, maskgit = tiny_gpt(), test_maskgit.tiny_model()
    dit, sit, hf = tiny_dit(seed=0), tiny_dit(seed=1, sit=True), tiny_diffusers_dit(seed=2)
    return {
        "root": root, "gpt": gpt, "maskgit": maskgit, "dit": dit, "sit": sit, "diffusers": hf,
        "vq": save_vq(tiny_vq(), root / "vq_tiny.pt"),
        "llamagen.pt": save_gpt(gpt, root / "c2i_tiny.pt"),
        "llamagen-fsdp.pt": save_gpt(gpt, root / "c2i_tiny_fsdp.pt", fsdp=True),
        "maskgit.pth": test_maskgit.save_checkpoint(maskgit, root / "tiny.pth"),
        "maskgit-wrapped.pth": test_maskgit.save_checkpoint(maskgit, root / "tiny_ddp.pth",
                                                            prefix="module._orig_mod."),
        "dit.pt": save_pt(dit, root / "DiT-tiny.pt"),
        "sit.pt": save_pt(sit, root / "SiT-tiny.pt"),
        "dit-folder": save_diffusers_pipeline(root / "DiT-diffusers", hf, tiny_vae(seed=3)),
    }


# ---------------------------------------------------------------- parity, one per family

def llamagen_parity(files, model):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 32, (3, 16))
    labels = np.array([1, 7, 10])  # 10 is the null class
    with torch.no_grad():
        expected = files["gpt"](torch.tensor(tokens[:, :-1]), torch.tensor(labels)).numpy()
    out = np.array(model(mx.array(tokens[:, :-1]), mx.array(labels)))
    assert out.shape == expected.shape == (3, 16, 32)
    return out, expected


def maskgit_parity(files, model):
    k, n = test_maskgit.K, test_maskgit.N
    rng = np.random.default_rng(0)
    codes = rng.integers(0, k, (3, n))
    codes[rng.random((3, n)) < 0.5] = k  # a partly masked grid
    labels, drop = np.array([1, 7, 4]), np.array([False, False, True])  # the third is null
    with torch.no_grad():
        expected = files["maskgit"](torch.tensor(codes).reshape(3, 4, 4), torch.tensor(labels),
                                    torch.tensor(drop)).numpy()
    # upstream appends the register after the image tokens, the backbone puts it first
    out = np.array(model(mx.array(codes), mx.array(np.where(drop, 10, labels))))
    assert out.shape == expected.shape == (3, n, k + 1)
    return out, expected


def original_dit_parity(name):
    def parity(files, model):
        x, t, y = test_dit.inputs()
        if name == "sit":
            t = t / 1000  # SiT's time runs over [0, 1]
        with torch.no_grad():
            expected = files[name](torch.tensor(x), torch.tensor(t), torch.tensor(y)).numpy()
        out = np.array(model(mx.array(x.transpose(0, 2, 3, 1)), mx.array(y), mx.array(t)))
        out = out.transpose(0, 3, 1, 2)
        assert out.shape == (3, 8, 8, 8)  # learned sigma: 8 channels, the first 4 predicted
        return out[:, :expected.shape[1]], expected
    return parity


def diffusers_dit_parity(files, model):
    x, t, y = test_dit.inputs()
    with torch.no_grad():
        expected = files["diffusers"](torch.tensor(x), torch.tensor(t), torch.tensor(y)).sample.numpy()
    config = model.config
    assert config.timestep_freq_shift == 1.0 and config.mlp_norm_eps == 1e-5 and config.fused_qkv
    out = np.array(model(mx.array(x.transpose(0, 2, 3, 1)), mx.array(y), mx.array(t)))
    return out.transpose(0, 3, 1, 2), expected


# ---------------------------------------------------------------- hub caches, one per alias

def llamagen_hub(files, tmp_path, hf_home):
    add_to_hub_cache(hf_home, "FoundationVision/LlamaGen",
                     {"c2i_L_256.pt": files["llamagen.pt"], "vq_ds16_c2i.pt": files["vq"]})


def maskgit_hub(files, tmp_path, hf_home):
    add_to_hub_cache(hf_home, "llvictorll/Halton-MaskGIT",
                     {"ImageNet_256_tiny.pth": files["maskgit.pth"]})
    add_to_hub_cache(hf_home, "FoundationVision/LlamaGen", {"vq_ds16_c2i.pt": files["vq"]})


def dit_hub(files, tmp_path, hf_home):
    """Tiny diffusers models; the VAE written as the real sd-vae-ft-mse files are: legacy
    attention names and no scaling_factor in config.json."""
    transformer = tmp_path / "transformer"
    tiny_diffusers_dit(seed=5, sample_size=32).save_pretrained(transformer)
    vae = save_vae(tiny_vae(seed=6), tmp_path / "vae", legacy_names=True, scaling_factor=False)
    add_folders_to_hub_cache(hf_home, "facebook/DiT-XL-2-256", {
        "transformer/config.json": transformer / "config.json",
        "transformer/diffusion_pytorch_model.safetensors":
            transformer / "diffusion_pytorch_model.safetensors"})
    add_to_hub_cache(hf_home, "stabilityai/sd-vae-ft-mse", {
        "config.json": vae / "config.json",
        "diffusion_pytorch_model.safetensors": vae / "diffusion_pytorch_model.safetensors"})


def dit_hub_check(folder, images):
    assert json.loads((folder / "model_index.json").read_text())["license"] == "CC-BY-NC-4.0"
    ae = json.loads((folder / "autoencoder" / "config.json").read_text())
    assert ae["config"]["scaling_factor"] == 0.18215  # diffusers' default, DiT's


@dataclass(frozen=True)
class Row:
    family: str
    source: str                       # key of the upstream file (or folder) in `files`
    convert_args: tuple               # what the CLI needs beside the source and --out
    parity: Callable
    paradigm: str
    other_family: str                 # a file of another family, refused naming this one's keys
    expected_keys: str
    alias: str | None = None          # an alias whose hub files `hub` lays out
    hub: Callable | None = None
    hub_args: tuple = ()
    image_size: int = 0               # of the alias's PNGs
    hub_check: Callable | None = None


def _vq(files):
    return ("--autoencoder", str(files["vq"]))


def _vae(files):
    return ("--autoencoder", str(files["dit-folder"] / "vae"))


ROWS = {
    "llamagen": Row("llamagen", "llamagen.pt", ("--config", LLAMAGEN_CONFIG), llamagen_parity,
                    "next-token", "vq", "expected keys tok_embeddings.weight",
                    alias="llamagen-c2i-l-256", hub=llamagen_hub,
                    # 16x16 tokens (256 px at upstream's stride), decoded by the tiny 2x VQ
                    image_size=32),
    "llamagen-fsdp": Row("llamagen", "llamagen-fsdp.pt", ("--config", LLAMAGEN_CONFIG),
                         llamagen_parity, "next-token", "vq", "expected keys tok_embeddings.weight"),
    "maskgit": Row("maskgit", "maskgit.pth", ("--config", test_maskgit.CONFIG), maskgit_parity,
                   "masked-token", "llamagen.pt", "expected keys tok_emb.weight",
                   alias="maskgit-halton-t-256", hub=maskgit_hub, hub_args=("--steps", "5"),
                   image_size=8),  # the tiny checkpoint's 4x4 tokens, the tiny 2x VQ
    "maskgit-wrapped": Row("maskgit", "maskgit-wrapped.pth", ("--config", test_maskgit.CONFIG),
                           maskgit_parity, "masked-token", "llamagen.pt",
                           "expected keys tok_emb.weight"),
    "dit": Row("dit", "dit.pt", ("--config", DIT_CONFIG), original_dit_parity("dit"),
               "diffusion", "llamagen.pt", "expected keys x_embedder.proj.weight"),
    "dit-diffusers": Row("dit", "dit-folder", (), diffusers_dit_parity, "diffusion",
                         "llamagen.pt", "expected keys x_embedder.proj.weight",
                         alias="dit-xl-2-256", hub=dit_hub, hub_args=("--steps", "2"),
                         # a 32x32 latent (256 px at the real VAE's 8x), the tiny 2x VAE
                         image_size=64, hub_check=dit_hub_check),
    "sit": Row("sit", "sit.pt", ("--config", DIT_CONFIG), original_dit_parity("sit"),
               "diffusion", "llamagen.pt", "expected keys x_embedder.proj.weight"),
}
HUB_ROWS = [name for name, row in ROWS.items() if row.alias]


def convert_cli(files, row: Row, source, out):
    autoencoder = () if row.source == "dit-folder" else \
        _vq(files) if row.family in ("llamagen", "maskgit") else _vae(files)
    return runner.invoke(app, ["convert", str(source), "--family", row.family, *row.convert_args,
                               *autoencoder, "--out", str(out)])


@pytest.mark.parametrize("name", list(ROWS))
def test_cli_conversion_matches_the_reference_outputs(files, name, tmp_path):
    row = ROWS[name]
    result = convert_cli(files, row, files[row.source], tmp_path / "out")
    assert result.exit_code == 0, result.output
    pipe = Pipeline(tmp_path / "out")
    assert (pipe.index["family"], pipe.paradigm) == (row.family, row.paradigm)
    out, expected = row.parity(files, pipe.transformer)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", HUB_ROWS)
def test_an_alias_from_the_hub_cache_generates_pngs_of_its_size(files, name, tmp_path):
    row = ROWS[name]
    hf_home, cache = tmp_path / "hf", tmp_path / "models"
    row.hub(files, tmp_path, hf_home)
    cmd = [sys.executable, "-m", "mlx_imgen.cli", "generate", row.alias, "--class", "3",
           "--n", "2", *row.hub_args, "--output", str(tmp_path / "img.png")]
    env = offline_env(hf_home, cache)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    images = [Image.open(tmp_path / f"img-{i}.png") for i in range(2)]
    assert [im.size for im in images] == [(row.image_size, row.image_size)] * 2
    assert images[0].text["paradigm"] == row.paradigm and images[0].text["class"] == "3"
    for flag, value in zip(row.hub_args[::2], row.hub_args[1::2]):
        assert images[0].text[flag.removeprefix("--")] == value
    folder = cache / f"{row.alias}-float32"
    assert (folder / "model_index.json").is_file()
    if row.hub_check:
        row.hub_check(folder, images)
    again = subprocess.run(cmd + ["--force"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "converting" not in again.stderr


@pytest.mark.parametrize("name", [n for n in ROWS if not n.endswith(("-fsdp", "-wrapped"))])
def test_another_familys_checkpoint_is_refused_naming_the_expected_keys(files, name, tmp_path):
    row = ROWS[name]
    result = convert_cli(files, row, files[row.other_family], tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert row.expected_keys in " ".join(result.output.split())
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
