"""aMUSEd generation end to end on a converted tiny repo: `mlx-imgen generate` writes the images
of prompts (--prompt, --prompts, --negative-prompt, --steps, --cfg), an image does not depend
on the batch it is sampled in, the random-weight pipeline builds at the published sizes; and
the bad inputs (steps above the token count, guidance that is not finite, an unconverted repo
folder, fp16 VQ weights that overflowed, a VQ-GAN that overflows as it decodes): one sentence,
exit 2, no image written."""

import dataclasses
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


def test_the_published_sizes_are_estimated_without_computing_a_weight():
    for alias in ("amused-256", "amused-512"):
        estimate = generation_estimate(model_shape(alias, "float16"), 1, 1, 1)
        # the U-ViT (about 0.6 B) and CLIP-L's text tower (0.12 B) in float16, the VQ-GAN's
        # decoder (0.09 B) in float32
        assert 1.75e9 < estimate.weights < 1.85e9, estimate.describe()


def test_a_random_pipeline_builds_every_part_and_runs(monkeypatch):
    """Pipeline.random at the family's sizes (shrunk here: the published ones take seconds to
    draw): a U-ViT, the text tower and the VQ-GAN, whose parts fit one another."""
    from mlx_imgen import families
    from mlx_imgen.autoencoders import AUTOENCODERS
    from mlx_imgen.text.clip import CLIPTextConfig
    from mlx_imgen.uvit import UVitConfig

    tiny = UVitConfig(hidden_size=32, cond_embed_dim=16, micro_cond_encode_dim=8,
                      micro_cond_embed_dim=40, encoder_hidden_size=32, in_channels=16,
                      block_out_channels=16, num_res_blocks=1, block_num_heads=2,
                      num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                      sample_size=16)
    text = CLIPTextConfig(width=32, depth=2, heads=4, mlp_hidden=64, projection_dim=16)
    family = families.get("amused")
    monkeypatch.setitem(families.FAMILIES, "amused", dataclasses.replace(
        family, config_for=lambda size, image_size: tiny, text_encoder=("clip_text", text)))
    vq = AUTOENCODERS["diffusers-vq"]
    monkeypatch.setitem(AUTOENCODERS, "diffusers-vq", dataclasses.replace(
        vq, config=lambda: vq.config(block_out_channels=(8, 8, 8, 8, 8), norm_groups=4,
                                     latent_channels=4, vq_embed_dim=4)))
    pipe = Pipeline.random("amused-256")
    assert pipe.image_size == 256 and pipe.config.grid_size == 16
    ids = mx.zeros((1, 77), dtype=mx.int32)
    encoding = pipe.text_encoder.encode(ids, layer=-2)
    tokens = mx.full((1, 256), pipe.config.mask_id, dtype=mx.int32)
    logits = pipe.transformer(tokens, context=encoding.hidden_states, pooled=encoding.pooled,
                              micro_conditions=mx.array([[256, 256, 0, 0, 6.0]]))
    assert logits.shape == (1, 256, 8192)
    codes = mx.argmax(logits, axis=-1).astype(mx.int32)
    assert pipe.decode(codes).shape == (1, 256, 256, 3)


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
    assert_refused(result, "non-finite values in float32")
    assert "convert the model again from the hub repo" in result.output
    assert not list(tmp_path.glob("*.png"))


def test_profile_times_the_text_encoding_and_the_sampling(folder, tmp_path):
    out = tmp_path / "profile.json"
    result = runner.invoke(app, ["profile", folder, "--batch-sizes", "2", "--trials", "1",
                                 "--steps", "3", "--step-budget", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    [row] = json.loads(out.read_text())["results"]
    assert row["status"] == "ok" and row["paradigm"] == "masked-token"
    # the stand-in prompts are encoded inside the conditioning time, every run
    assert row["stages_s"]["conditioning"] > 0 and row["stages_s"]["sampling"] > 0
    assert row["forward_passes_per_image"] == 6 and row["gflops_per_image"] > 0
