"""Reproducible images: the same seed gives the same images whatever the batch, the PNG holds
what regenerates an image, options a model never reads are refused, small grids get working
defaults."""

import json
import shlex
import sys

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mlx_imgen.cli.app import app
from mlx_imgen.paradigms import masked_token
from mlx_imgen.paradigms.keys import image_keys
from mlx_imgen.pipeline import Pipeline, random_classes
from tiny_pipelines import write_tiny_pipeline

runner = CliRunner()
# every paradigm, its stochastic samplers included (DDPM's and the SDE's step noise)
SAMPLING = {"llamagen": dict(temperature=1.0, cfg=2.0), "maskgit": dict(steps=6),
            "dit": dict(sampler="ddpm", steps=4), "sit": dict(sampler="sde", steps=4)}
CLASSES = [3, 3, 5]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {family: Pipeline(write_tiny_pipeline(root / family, family)) for family in SAMPLING}


def sampled_in_batches(pipe, plan, batch_size: int, seed: int = 11) -> np.ndarray:
    """Codes or latents of the CLASSES run, sampled `batch_size` images at a time, as
    Pipeline.generate splits a run."""
    out = []
    for start in range(0, len(CLASSES), batch_size):
        labels = mx.array(CLASSES[start:start + batch_size])
        out.append(np.array(pipe.sample(labels, plan, seed=seed, first_index=start)))
    return np.concatenate(out)


@pytest.mark.parametrize("family", list(SAMPLING))
def test_the_batch_size_does_not_change_the_samples(pipes, family):
    pipe = pipes[family]
    plan, _ = pipe.plan(**SAMPLING[family])
    one, two, three = (sampled_in_batches(pipe, plan, b) for b in (1, 2, 3))
    if pipe.paradigm == "diffusion":
        # a batch of another size may sum the model's matmuls in another order (BLAS picks
        # its kernels by shape): the last bits of the latents may differ, never more. The
        # random model is no denoiser and its latents grow to hundreds: compare relatively.
        scale = np.abs(one).max()
        np.testing.assert_allclose(two, one, atol=1e-5 * scale, rtol=0)
        np.testing.assert_allclose(three, one, atol=1e-5 * scale, rtol=0)
    else:
        np.testing.assert_array_equal(two, one)
        np.testing.assert_array_equal(three, one)
    # images 0 and 1 share their class: they differ only by their own random numbers
    assert not np.allclose(one[0], one[1])


@pytest.mark.parametrize("family", list(SAMPLING))
def test_generated_images_do_not_depend_on_the_batch_size(pipes, family):
    pipe = pipes[family]
    images = [np.stack([np.array(im) for im in pipe.generate(CLASSES, seed=4, batch_size=b,
                                                             **SAMPLING[family])])
              for b in (1, 3)]
    # latents equal to 1e-5 decode to the same uint8 levels, except that a value on a rounding
    # boundary may land one level apart
    difference = np.abs(images[0].astype(int) - images[1].astype(int))
    assert difference.max() <= (1 if pipe.paradigm == "diffusion" else 0)
    assert (difference == 0).mean() > 0.99


def test_image_keys_depend_on_the_seed_and_the_index_only():
    run = np.array(image_keys(5, seed=7))
    np.testing.assert_array_equal(np.array(image_keys(2, seed=7, first=3)), run[3:])
    np.testing.assert_array_equal(np.array(image_keys(5, key=mx.random.key(7))), run)
    assert len({tuple(k) for k in run}) == 5
    assert not np.array_equal(np.array(image_keys(5, seed=8)), run)
    own = mx.array(run[::-1].copy())
    assert image_keys(5, key=own) is own  # one key per image is taken as given
    with pytest.raises(ValueError, match="one key per image"):
        masked_token.Draws(mx.random.key(7), 4)


# --- random classes --------------------------------------------------------------------------

def test_random_classes_are_distinct_and_each_depends_on_its_index_only():
    run = random_classes(3, 25, 10)
    assert sorted(run[:10]) == sorted(run[10:20]) == list(range(10))  # rounds of every class
    assert len(set(random_classes(0, 50, 1000))) == 50
    for first in range(0, 20, 3):
        assert random_classes(3, 5, 10, first) == run[first:first + 5]
    assert random_classes(4, 10, 1000) != random_classes(3, 10, 1000)


def test_cli_without_class_draws_a_different_class_for_each_image(pipes, tmp_path):
    out = tmp_path / "r.png"
    result = runner.invoke(app, ["generate", str(pipes["llamagen"].folder), "--n", "3",
                                 "--seed", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    drawn = [int(Image.open(tmp_path / f"r-{i}.png").text["class"]) for i in range(3)]
    assert len(set(drawn)) == 3 and drawn == random_classes(2, 3, 10)


# --- provenance in the PNG -------------------------------------------------------------------

def test_png_records_what_regenerates_the_image_bit_for_bit(pipes, tmp_path, monkeypatch):
    pipe = pipes["maskgit"]
    args = ["generate", str(pipe.folder), "--n", "3", "--seed", "5", "--batch-size", "2",
            "--temperature", "1.5", "--output", str(tmp_path / "run.png")]
    monkeypatch.setattr(sys, "argv", ["mlx-imgen", *args])  # the runner leaves it as pytest's
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = Image.open(tmp_path / "run-2.png").text
    transformer = json.loads((pipe.folder / "transformer" / "config.json").read_text())
    assert json.loads(text["transformer_source"]) == transformer["source"]
    assert json.loads(text["autoencoder_source"])["sha256"] == f"{1:064x}"
    assert text["dtype"] == "float32" and text["quantization"] == "none"
    assert text["mlx_version"] == mx.__version__ and text["mlx_imgen_version"]
    assert (text["seed"], text["index"]) == ("5", "2")
    assert text["command"] == shlex.join(["mlx-imgen", *args]) and json.loads(text["plan"])["steps"] == 16
    pixels = np.array(Image.open(tmp_path / "run-2.png"))

    # through the API, from the recorded class, seed, index and sampling options
    alone = pipe.generate([int(text["class"])], seed=int(text["seed"]),
                          first_index=int(text["index"]), **json.loads(text["sampling"]))
    np.testing.assert_array_equal(np.array(alone[0]), pixels)

    # through the CLI, with the command the PNG records
    command = shlex.split(text["regenerate"])
    assert command[:2] == ["mlx-imgen", "generate"]
    again = tmp_path / "again.png"
    result = runner.invoke(app, [*command[1:], "--output", str(again)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.array(Image.open(again)), pixels)


def test_png_records_the_quantization_bits_and_group_size(pipes, tmp_path):
    out = tmp_path / "q.png"
    result = runner.invoke(app, ["generate", str(pipes["llamagen"].folder), "--class", "1",
                                 "--quantize", "8", "--group-size", "32", "--output", str(out)])
    assert result.exit_code == 0, result.output
    text = Image.open(out).text
    assert (text["quantization"], text["quantization_group_size"]) == ("8-bit", "32")
    assert "--quantize 8 --group-size 32" in text["regenerate"]


def test_provenance_is_json_ready_and_names_the_plan(pipes):
    pipe = pipes["dit"]
    plan, sampling = pipe.plan(steps=3)
    record = json.loads(json.dumps(pipe.provenance(plan, sampling, seed=9)))
    assert record["seed"] == 9 and record["sampling"]["steps"] == 3
    assert record["plan"]["steps"] == 3 and record["transformer_source"]["file"] == "dit.pt"
    assert record["quantization"] is None and record["paradigm"] == "diffusion"


# --- options a model does not read -----------------------------------------------------------

@pytest.mark.parametrize("family, option, value", [
    ("llamagen", "sampler", "halton"),
    ("llamagen", "cfg_channels", 3),
    ("llamagen", "steps", 8),
    ("maskgit", "cfg_channels", "all"),
    ("dit", "temperature", 1.0),
    ("dit", "top_k", 5),
    ("dit", "top_p", 0.9),
    ("sit", "temperature", 1.0),
    ("sit", "top_p", 0.9),
])
def test_an_option_the_model_never_reads_is_refused_by_its_cli_name(pipes, family, option,
                                                                     value):
    pipe = pipes[family]
    flag = "--" + option.replace("_", "-")
    with pytest.raises(ValueError, match=f"^{flag} does not apply to {family} "
                                         rf"\({pipe.paradigm}\) models"):
        pipe.plan(**{option: value})


@pytest.mark.parametrize("family, options", [
    ("llamagen", dict(cfg=2.0, temperature=0.5, top_k=5, top_p=0.9)),
    ("maskgit", dict(sampler="confidence", steps=4, cfg=1.0, temperature=2.0, top_k=3)),
    ("dit", dict(sampler="ddim", steps=4, cfg=2.0, cfg_channels="all")),
    ("sit", dict(sampler="heun", steps=4, cfg=2.0, cfg_channels=3)),
])
def test_the_options_a_model_reads_are_accepted(pipes, family, options):
    plan, sampling = pipes[family].plan(**options)
    assert {k: sampling[k] for k in options} == options


def test_maskgit_refuses_top_p_in_its_own_words(pipes):
    with pytest.raises(ValueError, match="no top-p"):
        pipes["maskgit"].plan(top_p=0.9)


def test_cli_refuses_sampler_on_llamagen_with_one_line(pipes, tmp_path):
    out = tmp_path / "x.png"
    result = runner.invoke(app, ["generate", str(pipes["llamagen"].folder), "--class", "1",
                                 "--sampler", "halton", "--output", str(out)])
    assert result.exit_code == 2
    assert "--sampler does not apply to llamagen (next-token) models" in result.output
    assert "Traceback" not in result.output and not out.exists()


# --- small grids -----------------------------------------------------------------------------

def test_a_small_grid_lowers_the_presets_steps_to_its_token_count(pipes):
    pipe = pipes["maskgit"]  # 16 tokens; the default Halton preset has 32 steps
    plan, _ = pipe.plan()
    assert plan.steps == 16 == pipe.config.num_tokens
    images = pipe.generate([1, 2], seed=0)
    assert len(images) == 2 and images[0].size == (pipe.image_size,) * 2
    assert pipe.plan(sampler="confidence")[0].steps == 12  # below the token count: kept
    assert pipe.plan(steps=16)[0].steps == 16


def test_an_explicit_step_count_above_the_token_count_is_refused(pipes):
    with pytest.raises(ValueError, match="--steps 17 exceeds this model's 16 tokens.*at most 16"):
        pipes["maskgit"].generate([1], steps=17)
