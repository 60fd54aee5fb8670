"""aMUSEd generation end to end on a converted tiny repo: `mlx-imgen generate` writes the images
of prompts (--prompt, --prompts, --negative-prompt, --steps, --cfg), an image does not depend
on the batch it is sampled in, the random-weight pipeline builds at the published sizes; and
the bad inputs (steps above the token count, guidance that is not finite, an unconverted repo
folder, fp16 VQ weights that overflowed, a VQ-GAN that overflows as it decodes): one sentence,
exit 2, no image written."""

import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import assert_refused
from PIL import Image
from typer.testing import CliRunner

from amused_files import GRID, write_tiny_amused
from mlx_imgen.cli.app import app
from mlx_imgen.memory import generation_estimate, model_shape
from mlx_imgen.pipeline import Pipeline

runner = CliRunner()
IMAGE = GRID * 4  # the tiny VQ decodes 4x


def _converted(root, name: str, **repo) -> str:
    write_tiny_amused(root / f"{name}-repo", **repo)
    result = runner.invoke(app, ["convert", str(root / f"{name}-repo"), "--out",
                                 str(root / name), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    return str(root / name)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _converted(tmp_path_factory.mktemp("amused-gen"), "pipe")


def generate(*args):
    return runner.invoke(app, ["generate", *map(str, args)])


def test_cli_writes_an_image_per_prompt_with_its_record(folder, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red fox", "seed": 3}\n'
                       '{"prompt": "two cats", "negative_prompt": "blurry"}\n')
    result = generate(folder, "--prompts", prompts, "--n", "2", "--steps", "4", "--cfg", "3",
                      "--negative-prompt", "dark", "--out", tmp_path / "img.png")
    assert result.exit_code == 0, result.output
    paths = [tmp_path / f"img-{i}.png" for i in range(4)]
    images = [Image.open(p) for p in paths]
    assert all(im.size == (IMAGE, IMAGE) for im in images)
    meta = images[2].text
    assert meta["prompt"] == "two cats" and meta["negative_prompt"] == "blurry"
    assert meta["family"] == "amused" and meta["steps"] == "4" and meta["cfg"] == "3.0"
    # the two images of a prompt differ (their own random draws), and sampling is not flat
    pixels = [np.asarray(im, dtype=np.int32) for im in images]
    assert np.abs(pixels[0] - pixels[1]).max() > 0
    result = generate(folder, "--prompt", "a lighthouse by the sea", "--out",
                      tmp_path / "one.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "one.png").size == (IMAGE, IMAGE)


def test_an_image_does_not_depend_on_its_batch(folder):
    pipe = Pipeline(folder)
    prompts = ["a red fox", "a red fox", "two cats"]
    together = pipe.generate(prompts=prompts, seed=5, steps=4, negative_prompt="blurry")
    alone = [pipe.generate(prompts=[p], seed=5, first_index=i, steps=4,
                           negative_prompt="blurry")[0] for i, p in enumerate(prompts)]
    for a, b in zip(together, alone):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(together[0]), np.asarray(together[1]))


def test_random_pipelines_build_at_the_published_sizes():
    for alias, size, grid in (("amused-256", 256, 16), ("amused-512", 512, 32)):
        pipe = Pipeline.random(alias)
        assert pipe.image_size == size and pipe.config.grid_size == grid
        assert pipe.text_encoder.config.width == 768
        assert pipe.text_encoder.config.projection_dim == 768
        estimate = generation_estimate(model_shape(alias, "float16"), 1, 1, 1)
        # the U-ViT, the VQ-GAN's decoder and CLIP-L's text tower: about 0.8 B parameters
        assert 1.4e9 < estimate.weights < 2.0e9, estimate.describe()
        tokens = mx.full((1, grid * grid), pipe.config.mask_id, dtype=mx.int32)
        logits = pipe.transformer(tokens, context=mx.zeros((1, 77, 768)),
                                  pooled=mx.zeros((1, 768)),
                                  micro_conditions=mx.array([[size, size, 0, 0, 6.0]]))
        assert logits.shape == (1, grid * grid, 8192)


def test_the_memory_estimate_reads_a_converted_folder(folder):
    shape = model_shape(folder, "float32")
    assert shape.image_size == IMAGE and shape.paradigm == "masked-token"
    assert shape.weight_bytes > 0


@pytest.mark.parametrize("args, phrase", [
    (["--steps", "17"], "--steps 17"),
    (["--cfg", "nan"], "--cfg"),
    (["--cfg", "inf"], "--cfg"),
    (["--class", "3"], "text-to-image model"),
])
def test_bad_sampling_options_are_refused_and_nothing_written(folder, tmp_path, args, phrase):
    result = generate(folder, "--prompt", "a red fox", *args, "--out", tmp_path / "x.png")
    assert_refused(result, phrase)
    assert not list(tmp_path.glob("*.png"))


def test_an_unconverted_repo_folder_is_refused(tmp_path):
    write_tiny_amused(tmp_path / "repo")
    result = generate(tmp_path / "repo", "--prompt", "a red fox", "--out", tmp_path / "x.png")
    assert_refused(result, "convert it first")
    assert not list(tmp_path.glob("*.png"))


def test_fp16_vq_weights_that_overflowed_are_refused_at_conversion(tmp_path):
    write_tiny_amused(tmp_path / "repo", vq_overflow="fp16")
    result = runner.invoke(app, ["convert", str(tmp_path / "repo"), "--out",
                                 str(tmp_path / "out")])
    assert_refused(result, "vqvae/diffusion_pytorch_model.fp16.safetensors")
    assert "holds non-finite weights" in result.output
    assert not (tmp_path / "out").exists()


def test_a_vq_that_overflows_as_it_decodes_writes_no_image(tmp_path):
    folder = _converted(tmp_path, "hot", vq_overflow="decode")
    result = generate(folder, "--prompt", "a red fox", "--steps", "2", "--out",
                      tmp_path / "x.png")
    assert_refused(result, "non-finite")
    assert not list(tmp_path.glob("*.png"))
