"""Without the hub, an alias fails at once with one sentence that lists every file to fetch and
the exact convert command for them; that command then converts the files offline."""

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

from dit_files import save_vae, tiny_diffusers_dit, tiny_vae
from hubcache import add_to_hub_cache, offline_env
from llamagen_files import save_gpt, save_vq, tiny_gpt, tiny_vq

CLI = [sys.executable, "-m", "mlx_imgen.cli"]
HUB = "https://huggingface.co"

# alias -> (every file with its hub repo, the command's local paths)
EXPECTED = {
    "llamagen-c2i-l-256": (
        [f"c2i_L_256.pt and vq_ds16_c2i.pt from {HUB}/FoundationVision/LlamaGen"],
        "./c2i_L_256.pt --family llamagen --autoencoder ./vq_ds16_c2i.pt"),
    "maskgit-halton-l-384": (
        [f"ImageNet_384_large.pth from {HUB}/llvictorll/Halton-MaskGIT",
         f"vq_ds16_c2i.pt from {HUB}/FoundationVision/LlamaGen"],
        "./ImageNet_384_large.pth --family maskgit --autoencoder ./vq_ds16_c2i.pt"),
    "dit-xl-2-256": (
        [f"transformer/config.json and transformer/diffusion_pytorch_model.safetensors from "
         f"{HUB}/facebook/DiT-XL-2-256 into a folder ./facebook-DiT-XL-2-256",
         f"config.json and diffusion_pytorch_model.safetensors from {HUB}/stabilityai/"
         "sd-vae-ft-mse into a folder ./stabilityai-sd-vae-ft-mse (keeping their paths)"],
        "./facebook-DiT-XL-2-256 --family dit --autoencoder ./stabilityai-sd-vae-ft-mse"),
    "sit-xl-2-256": (
        ["SiT-XL-2-256.pt (from the link in its upstream README)",
         f"config.json and diffusion_pytorch_model.safetensors from {HUB}/stabilityai/"
         "sd-vae-ft-mse into a folder ./stabilityai-sd-vae-ft-mse"],
        "./SiT-XL-2-256.pt --family sit --autoencoder ./stabilityai-sd-vae-ft-mse"),
}


def run(args, env, cwd=None):
    return subprocess.run(CLI + args, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    return " ".join(stderr.split())


def command_in(message: str) -> list[str]:
    commands = re.findall(r"`(mlx-imgen convert [^`]+)`", message)
    assert len(commands) == 1, message
    return shlex.split(commands[0])[1:]


@pytest.mark.parametrize("alias", sorted(EXPECTED))
def test_offline_alias_lists_every_file_and_the_exact_command(alias, tmp_path):
    env = offline_env(tmp_path / "empty-hf", tmp_path / "models")
    out = tmp_path / "out"
    result = run(["convert", alias, "--out", str(out)], env)
    assert result.returncode == 2
    message = one_line(result.stderr)
    files, paths = EXPECTED[alias]
    for step in files:
        assert step in message
    assert f"then run `mlx-imgen convert {paths} --out {out}`" in message
    assert list(tmp_path.iterdir()) == []  # nothing written, no lock file left


def test_generate_names_its_cache_folder_and_dtype_in_the_command(tmp_path):
    env = offline_env(tmp_path / "empty-hf", tmp_path / "models")
    result = run(["generate", "llamagen-c2i-l-256", "--dtype", "bfloat16", "--output",
                  str(tmp_path / "img.png")], env)
    assert result.returncode == 2
    message = one_line(result.stderr)
    assert (f"--autoencoder ./vq_ds16_c2i.pt --out {tmp_path / 'models'}/"
            "llamagen-c2i-l-256-bfloat16 --dtype bfloat16`") in message
    assert not (tmp_path / "img.png").exists() and not list((tmp_path / "models").iterdir())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_at_once_without_retries(tmp_path):
    # connections are refused at once; huggingface_hub alone retries them for about 24 s
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = offline_env(tmp_path / "empty-hf", tmp_path / "models")
    del env["HF_HUB_OFFLINE"]
    env["HF_ENDPOINT"] = endpoint
    start = time.monotonic()
    result = run(["convert", "dit-xl-2-256", "--out", str(tmp_path / "out")], env)
    elapsed = time.monotonic() - start
    assert result.returncode == 2
    message = one_line(result.stderr)
    assert "could not get transformer/diffusion_pytorch_model.safetensors from " \
           "facebook/DiT-XL-2-256: the hub could not be reached" in message
    assert f"{endpoint}/stabilityai/sd-vae-ft-mse into a folder ./stabilityai-sd-vae-ft-mse" \
        in message
    assert "Retrying" not in result.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"


def test_a_missing_autoencoder_fails_before_the_transformer_is_read(tmp_path):
    hf_home = tmp_path / "hf"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    add_to_hub_cache(hf_home, "FoundationVision/LlamaGen", {"c2i_L_256.pt": garbage})
    result = run(["convert", "llamagen-c2i-l-256", "--out", str(tmp_path / "out")],
                 offline_env(hf_home, tmp_path / "models"))
    assert result.returncode == 2
    message = one_line(result.stderr)
    assert message.startswith("error: could not get vq_ds16_c2i.pt from FoundationVision/LlamaGen")
    assert "c2i_L_256.pt and vq_ds16_c2i.pt from" in message


def test_the_commands_convert_the_listed_files_offline(tmp_path):
    env = offline_env(tmp_path / "empty-hf", tmp_path / "models")
    work = tmp_path / "downloads"
    work.mkdir()
    # the files as the user would fetch them, under the names the message gives
    save_gpt(tiny_gpt(), work / "c2i_L_256.pt")
    save_vq(tiny_vq(), work / "vq_ds16_c2i.pt")
    tiny_diffusers_dit(seed=5, sample_size=32).save_pretrained(
        work / "facebook-DiT-XL-2-256" / "transformer")
    # the real sd-vae-ft-mse files (legacy attention names, no scaling_factor in config.json)
    vae = save_vae(tiny_vae(seed=6), work / "stabilityai-sd-vae-ft-mse", legacy_names=True,
                   scaling_factor=False)
    config = json.loads((vae / "config.json").read_text())
    assert "scaling_factor" not in config
    for alias in ("llamagen-c2i-l-256", "dit-xl-2-256"):
        out = tmp_path / alias
        message = one_line(run(["convert", alias, "--out", str(out)], env).stderr)
        result = run(command_in(message), env, cwd=work)
        assert result.returncode == 0, result.stderr
        assert json.loads((out / "model_index.json").read_text())["family"] == alias.split("-")[0]
    shutil.rmtree(work)
