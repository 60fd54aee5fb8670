import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hubcache import offline_env
from llamagen_files import TINY_CONFIG, save_gpt, save_vq, tiny_gpt, tiny_vq
from mlx_imgen.cli.app import app
from mlx_imgen.paradigms import NextTokenPlan, next_token
from mlx_imgen.loading import load
from upstream import llamagen_gpt

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamagen")
    gpt = tiny_gpt()
    return {"root": root, "gpt": gpt, "ddp": save_gpt(gpt, root / "c2i_tiny.pt"),
            "fsdp": save_gpt(gpt, root / "c2i_tiny_fsdp.pt", fsdp=True),
            "vq": save_vq(tiny_vq(), root / "vq_tiny.pt")}


def convert_cli(files, source, out, *extra):
    return runner.invoke(app, ["convert", str(source), "--family", "llamagen", "--config",
                               TINY_CONFIG, "--autoencoder", str(files["vq"]), "--out", str(out),
                               *extra])


@pytest.fixture(scope="module")
def pipe(files):
    out = files["root"] / "converted"
    result = convert_cli(files, files["ddp"], out)
    assert result.exit_code == 0, result.output
    return load(str(out))


def teacher_forced(gpt, tokens, labels):
    with torch.no_grad():
        return gpt(torch.tensor(tokens[:, :-1]), torch.tensor(labels)).numpy()


def test_greedy_generation_with_cfg_matches_reference_tokens(files, pipe):
    labels = [2, 5, 9]
    with torch.no_grad():
        expected = llamagen_gpt.generate(files["gpt"], torch.tensor(labels), 16, cfg_scale=4.0,
                                         greedy=True).numpy()
    plan = NextTokenPlan(num_tokens=16, cfg_scale=4.0, temperature=0)
    tokens = next_token.generate(pipe.transformer, mx.array(labels), plan)
    np.testing.assert_array_equal(np.array(tokens), expected)


def test_generation_is_reproducible_from_a_seed(pipe):
    plan, _ = pipe.plan(cfg=3.0, top_k=8)
    a = next_token.generate(pipe.transformer, mx.array([1, 2]), plan, seed=7)
    b = next_token.generate(pipe.transformer, mx.array([1, 2]), plan, seed=7)
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_pipeline_generates_images_of_the_grid_size(pipe):
    images = pipe.generate([1, 2, 3], seed=0, batch_size=2)
    assert len(images) == 3
    assert all(im.size == (pipe.image_size, pipe.image_size) == (8, 8) for im in images)


def test_converted_folder_records_sources_and_settings(files, pipe):
    index = json.loads((pipe.folder / "model_index.json").read_text())
    assert index["family"] == "llamagen" and index["paradigm"] == "next-token"
    assert index["dtype"] == "float32" and index["quantization"] is None
    config = json.loads((pipe.folder / "transformer" / "config.json").read_text())
    assert config["source"]["file"] == "c2i_tiny.pt" and len(config["source"]["sha256"]) == 64
    assert config["backbone"]["heads"] == 4 and config["backbone"]["grid_size"] == 4
    result = runner.invoke(app, ["info", str(pipe.folder)])
    assert result.exit_code == 0 and "llamagen" in result.output


def test_cli_generate_writes_pngs_with_parameters(pipe, tmp_path):
    out = tmp_path / "dogs.png"
    result = runner.invoke(app, ["generate", str(pipe.folder), "--class", "3", "--class", "4",
                                 "--seed", "1", "--top-k", "5", "--output", str(out)])
    assert result.exit_code == 0, result.output
    for i, cls in enumerate([3, 4]):
        image = Image.open(tmp_path / f"dogs-{i}.png")
        assert image.size == (8, 8)
        assert image.text["class"] == str(cls) and image.text["top_k"] == "5"
        assert image.text["seed"] == "1" and image.text["paradigm"] == "next-token"
    grid = tmp_path / "grid.png"
    result = runner.invoke(app, ["generate", str(pipe.folder), "--class", "3", "--n", "3",
                                 "--grid", "--output", str(grid)])
    assert result.exit_code == 0, result.output
    assert Image.open(grid).size == (24, 8)


def test_unreachable_hub_says_how_to_pass_a_local_file(tmp_path):
    env = offline_env(tmp_path / "empty-hf", tmp_path / "models")
    result = subprocess.run([sys.executable, "-m", "mlx_imgen.cli", "convert", "llamagen-c2i-b-256",
                             "--out", str(tmp_path / "out")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert "c2i_B_256.pt" in result.stderr and "--family llamagen" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_conversion_needs_no_torch(files, tmp_path):
    script = ("import sys; sys.modules['torch'] = None; "
              "from mlx_imgen.cli.app import app; app()")
    result = subprocess.run(
        [sys.executable, "-c", script, "convert", str(files["ddp"]), "--family", "llamagen",
         "--config", TINY_CONFIG, "--autoencoder", str(files["vq"]), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "transformer" / "model.safetensors").is_file()


def _bad(files, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(files["ddp"].read_bytes()[:2000])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    (tmp_path / "exists").mkdir()
    return {
        "missing": (["convert", str(tmp_path / "nope.pt"), "--family", "llamagen"], "does not exist"),
        "truncated": (["convert", str(truncated), "--family", "llamagen"], "truncated"),
        "not a checkpoint": (["convert", str(text), "--family", "llamagen"], "not a PyTorch checkpoint"),
        "unknown alias": (["convert", "llamagen-c2i-q-256"], "did you mean"),
        "exists": (["convert", str(files["ddp"]), "--family", "llamagen"], "--force"),
    }


# another family's file: tests/test_families.py
@pytest.mark.parametrize("case", ["missing", "truncated", "not a checkpoint", "unknown alias",
                                  "exists"])
def test_bad_conversion_input_gets_one_sentence_and_leaves_nothing(files, tmp_path, case):
    args, words = _bad(files, tmp_path)[case]
    out = tmp_path / ("exists" if case == "exists" else "out")
    result = runner.invoke(app, [*args, "--config", TINY_CONFIG, "--autoencoder",
                                 str(files["vq"]), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_class_id_out_of_range_is_refused_before_any_image(pipe, tmp_path):
    result = runner.invoke(app, ["generate", str(pipe.folder), "--class", "10",
                                 "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert "outside 0..9" in result.output and not (tmp_path / "x.png").exists()


def test_existing_image_needs_force(pipe, tmp_path):
    (tmp_path / "x.png").write_bytes(b"keep")
    result = runner.invoke(app, ["generate", str(pipe.folder), "--class", "1",
                                 "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / "x.png").read_bytes() == b"keep"
