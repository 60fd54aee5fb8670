"""DiT and SiT end to end: both key layouts against their references, the pipeline and CLI,
the hub alias from a local cache, and bad input."""

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from dit_files import (TINY_CONFIG, save_diffusers_pipeline, save_pt, save_vae, tiny_dit,
                       tiny_diffusers_dit, tiny_vae)
from hubcache import add_to_hub_cache, offline_env
from mlx_imgen import families
from mlx_imgen.cli.app import app
from mlx_imgen.pipeline import Pipeline

runner = CliRunner()
HEADS = '{"heads": 4}'


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    dit, sit = tiny_dit(seed=0), tiny_dit(seed=1, sit=True)
    hf = tiny_diffusers_dit(seed=2)
    return {"root": root, "dit": dit, "sit": sit, "diffusers": hf,
            "dit.pt": save_pt(dit, root / "DiT-tiny.pt"),
            "sit.pt": save_pt(sit, root / "SiT-tiny.pt"),
            "folder": save_diffusers_pipeline(root / "DiT-diffusers", hf, tiny_vae(seed=3))}


def convert_cli(files, source, out, *extra, family=None, config=TINY_CONFIG, vae=True):
    args = ["convert", str(source), "--out", str(out)]
    args += ["--family", family] if family else []
    args += ["--config", config] if config else []
    args += ["--autoencoder", str(files["folder"] / "vae")] if vae else []
    return runner.invoke(app, [*args, *extra])


@pytest.fixture(scope="module")
def pipes(files):
    out = {}
    for name, source, family in [("dit", files["dit.pt"], None), ("sit", files["sit.pt"], "sit")]:
        result = convert_cli(files, source, files["root"] / f"{name}-mlx", family=family)
        assert result.exit_code == 0, result.output
        out[name] = Pipeline(files["root"] / f"{name}-mlx")
    result = convert_cli(files, files["folder"], files["root"] / "hf-mlx", config=None, vae=False)
    assert result.exit_code == 0, result.output
    out["diffusers"] = Pipeline(files["root"] / "hf-mlx")
    return out


def inputs(batch: int = 3):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 4, 8, 8)).astype(np.float32)
    return x, np.array([0.0, 417.0, 999.0][:batch], np.float32), np.array([1, 5, 10][:batch])


def run(pipe, x, t, y) -> np.ndarray:
    out = pipe.transformer(mx.array(x.transpose(0, 2, 3, 1)), mx.array(y), mx.array(t))
    return np.array(out).transpose(0, 3, 1, 2)


def test_both_layouts_configure_the_same_backbone(files, pipes, tmp_path):
    ours, theirs = pipes["dit"].config.to_dict(), pipes["diffusers"].config.to_dict()
    differences = {k for k in ours if ours[k] != theirs[k]}
    assert differences == {"timestep_freq_shift", "mlp_norm_eps"}
    # --config can ask a diffusers file for the original's numerics
    result = convert_cli(files, files["folder"], tmp_path / "out", vae=False,
                         config='{"timestep_freq_shift": 0, "mlp_norm_eps": null}')
    assert result.exit_code == 0, result.output
    assert Pipeline(tmp_path / "out").config.to_dict() == ours


def test_pipeline_generates_images_at_the_latent_size_times_the_vae_stride(pipes):
    for name, overrides in [("dit", {"steps": 2}), ("dit", {"steps": 2, "sampler": "ddim"}),
                            ("sit", {"steps": 2, "sampler": "heun"}), ("sit", {"steps": 2}),
                            ("diffusers", {"steps": 2})]:
        images = pipes[name].generate([1, 2, 3], seed=0, batch_size=2, **overrides)
        assert [im.size for im in images] == [(16, 16)] * 3  # 8x8 latents, the tiny VAE's 2x


def test_explicit_noise_and_seeds_reproduce_runs(pipes):
    pipe = pipes["sit"]
    noise = mx.random.normal((2, 8, 8, 4), key=mx.random.key(9))
    plan, _ = pipe.plan(sampler="euler", steps=3)
    a = pipe.sample(mx.array([1, 2]), plan, noise=noise)
    b = pipe.sample(mx.array([1, 2]), plan, noise=noise, seed=5)
    np.testing.assert_array_equal(np.array(a), np.array(b))
    plan, _ = pipe.plan(steps=3)  # the SDE draws its step noise from the seed
    c = pipe.sample(mx.array([1, 2]), plan, seed=5)
    d = pipe.sample(mx.array([1, 2]), plan, seed=5)
    e = pipe.sample(mx.array([1, 2]), plan, seed=6)
    np.testing.assert_array_equal(np.array(c), np.array(d))
    assert not np.array_equal(np.array(c), np.array(e))
    images = pipe.generate([1, 2], noise=noise, sampler="euler", steps=3)
    assert len(images) == 2


def test_converted_folders_record_family_license_and_sampler(files, pipes, monkeypatch):
    from mlx_imgen.cli import models

    monkeypatch.setattr(models.console, "width", 250)
    assert pipes["dit"].index["license"] == "CC-BY-NC-4.0"
    assert pipes["sit"].index["family"] == "sit" and pipes["sit"].index["license"] == "MIT"
    assert pipes["dit"].index["sampling"]["sampler"] == "ddpm"
    assert pipes["sit"].index["sampling"]["sampler"] == "sde"
    result = runner.invoke(app, ["info", str(files["root"] / "dit-mlx")])
    assert result.exit_code == 0 and "CC-BY-NC-4.0" in result.output
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "dit-xl-2-256" in result.output and "sit-xl-2-256" in result.output
    assert "CC-BY-NC-4.0" in result.output


def test_detection_takes_dit_and_the_family_flag_takes_sit(files):
    from mlx_imgen.weights.readers import read_state_dict

    assert families.detect(read_state_dict(files["dit.pt"])) == "dit"
    assert families.get("sit").preset_table == "sit" and families.get("dit").preset_table == "dit"


def test_sit_file_converts_under_its_card_with_family_sit(files, tmp_path):
    sit = tiny_dit(seed=4, sit=True, input_size=32)  # 256 px at the VAE's 8x, as the card says
    path = save_pt(sit, tmp_path / "SiT-XL-2-256.pt")
    result = convert_cli(files, path, tmp_path / "out", family="sit", config=HEADS)
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["alias"] == "sit-xl-2-256" and index["license"] == "MIT"
    assert index["sampling"]["sampler"] == "sde"


def test_sit_alias_says_to_pass_the_local_file(tmp_path):
    result = runner.invoke(app, ["convert", "sit-xl-2-256", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "SiT-XL-2-256.pt" in result.output and "--family sit" in result.output
    assert not (tmp_path / "out").exists()


def test_a_hub_vae_chosen_by_name_converts_with_a_local_checkpoint_and_alone(tmp_path):
    # the VAE's hub files are written as the real ones are: legacy attention names and no
    # scaling_factor in config.json (the alias's generate run is in tests/test_families.py)
    hf_home, cache = tmp_path / "hf", tmp_path / "models"
    vae = save_vae(tiny_vae(seed=6), tmp_path / "vae", legacy_names=True, scaling_factor=False)
    # the other upstream VAE, chosen by name for a local original checkpoint
    add_to_hub_cache(hf_home, "stabilityai/sd-vae-ft-ema", {
        "config.json": vae / "config.json",
        "diffusion_pytorch_model.safetensors": vae / "diffusion_pytorch_model.safetensors"})
    checkpoint = save_pt(tiny_dit(), tmp_path / "DiT-XL-2-256x256.pt")
    cmd = [sys.executable, "-m", "mlx_imgen.cli", "convert", str(checkpoint), "--config", HEADS,
           "--autoencoder", "sd-vae-ft-ema", "--out", str(tmp_path / "ema")]
    result = subprocess.run(cmd, env=offline_env(hf_home, cache), capture_output=True, text=True,
                            timeout=300)
    # the file name gives the card (256 px), whose 32x32 latent the tiny 8x8 file contradicts
    assert result.returncode == 2 and "trained at 64 px" in result.stderr
    cmd[cmd.index(HEADS)] = TINY_CONFIG
    result = subprocess.run(cmd, env=offline_env(hf_home, cache), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    ae = json.loads((tmp_path / "ema" / "autoencoder" / "config.json").read_text())
    assert ae["source"]["repo"] == "stabilityai/sd-vae-ft-ema"
    # the VAE alone, by its name, into an autoencoder folder holding the same stored weights
    result = subprocess.run([sys.executable, "-m", "mlx_imgen.cli", "convert", "sd-vae-ft-ema",
                             "--out", str(tmp_path / "vae-mlx")], env=offline_env(hf_home, cache),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "vae-mlx" / "config.json").read_text())["kind"] == "kl"
    assert (tmp_path / "vae-mlx" / "model.safetensors").stat().st_ino == \
        (tmp_path / "ema" / "autoencoder" / "model.safetensors").stat().st_ino


# ---------------------------------------------------------------- bad input

def _without_pos_embed(files, path):
    state = files["dit"].state_dict()
    del state["pos_embed"]
    torch.save(state, path)
    return path


def _mismatched_embedders(files, folder):
    save_diffusers_pipeline(folder, files["diffusers"], tiny_vae())
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = "transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight"
    state[key] = state[key] + 1
    save_file(state, weights)
    return folder


@pytest.mark.parametrize("case, words", [
    ("odd latent", "not a multiple of the patch size 2"),
    ("512 asked for 256", "trained at 512 px"),
    ("embedders differ", "its own timestep and class embedder"),
])
def test_bad_conversion_input_gets_one_sentence_and_leaves_nothing(files, tmp_path, case, words):
    extra = []
    if case == "odd latent":  # 72 px is a 9x9 latent
        source, config = _without_pos_embed(files, tmp_path / "nopos.pt"), '{"image_size": 72, "heads": 4}'
    elif case == "512 asked for 256":
        source = save_pt(tiny_dit(input_size=64), tmp_path / "DiT-512.pt")
        config = '{"image_size": 256, "heads": 4}'
    else:
        source, config = _mismatched_embedders(files, tmp_path / "hf"), None
    args = ["convert", str(source), "--out", str(tmp_path / "out"), *extra]
    args += ["--config", config] if config else []
    if not extra and case != "embedders differ":
        args += ["--autoencoder", str(files["folder"] / "vae")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("args, words", [
    (["--steps", "0"], "at least 1"),
    (["--sampler", "heun"], "DiT samples with ddpm or ddim"),
])
def test_bad_generation_input_writes_no_image(files, pipes, tmp_path, args, words):
    result = runner.invoke(app, ["generate", str(files["root"] / "dit-mlx"), "--class", "1",
                                 *args, "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()) and not (tmp_path / "x.png").exists()


def test_dopri5_refuses_a_step_count(files, pipes, tmp_path):
    result = runner.invoke(app, ["generate", str(files["root"] / "sit-mlx"), "--class", "1",
                                 "--sampler", "dopri5", "--steps", "5",
                                 "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "chooses its own steps" in result.output
    assert not (tmp_path / "x.png").exists()


def test_python_api_refuses_odd_noise_and_another_image_size(pipes):
    pipe = pipes["dit"]
    with pytest.raises(ValueError, match="not a multiple of the patch size 2"):
        pipe.generate([1], noise=mx.zeros((1, 9, 9, 4)))
    with pytest.raises(ValueError, match="generates 16 px images, not 32 px"):
        pipe.generate([1], image_size=32)


def test_cli_guides_all_channels_and_decodes_in_small_batches_on_request(files, pipes, tmp_path):
    common = ["generate", str(files["root"] / "dit-mlx"), "--class", "1", "--class", "2",
              "--sampler", "ddim", "--steps", "2", "--seed", "3"]
    for name, extra in (("three", []), ("all", ["--cfg-channels", "all", "--decode-batch-size", "1"])):
        result = runner.invoke(app, [*common, *extra, "--output", str(tmp_path / f"{name}.png")])
        assert result.exit_code == 0, result.output
    three = np.array(Image.open(tmp_path / "three-0.png"))
    every = np.array(Image.open(tmp_path / "all-0.png"))
    guided = {name: json.loads(Image.open(tmp_path / f"{name}-0.png").text["plan"])["guided_channels"]
              for name in ("three", "all")}
    assert guided == {"three": 3, "all": 4}
    assert not np.array_equal(three, every)


def test_a_local_vae_folder_named_like_a_hub_vae_is_taken_as_the_folder(files, tmp_path,
                                                                         monkeypatch):
    """`--autoencoder sd-vae-ft-mse` names the hub VAE unless a folder of that name is there:
    the user's own files win, and nothing is fetched (the hub is offline here)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    save_vae(tiny_vae(seed=7), tmp_path / "sd-vae-ft-mse", legacy_names=True, scaling_factor=False)
    result = runner.invoke(app, ["convert", str(files["dit.pt"]), "--config", TINY_CONFIG,
                                 "--autoencoder", "sd-vae-ft-mse", "--out", "dit-local-vae"])
    assert result.exit_code == 0, result.output
    ae = json.loads((tmp_path / "dit-local-vae" / "autoencoder" / "config.json").read_text())
    assert ae["source"]["repo"] is None and ae["config"]["scaling_factor"] == 0.18215
