"""aMUSEd conversion: from the alias through an offline hub cache, from a local folder of the
repo, from its fp16 variant; the converted text condition against transformers'
CLIPTextModelWithProjection; quantization, `models` and `info`; and the bad inputs (a missing
component folder, another masking schedule, a mask id the transformer cannot use)."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import assert_refused
from typer.testing import CliRunner

from amused_files import MASK_ID, repo_files, write_tiny_amused
from clip_tokenizer_files import reference_tokenizer
from hubcache import add_to_hub_cache, go_offline
from mlx_imgen.cli.app import app
from mlx_imgen.pipeline import Pipeline
from mlx_imgen.prompts import Prompt
from mlx_imgen.weights.shards import load_weights

runner = CliRunner()
REPO = "amused/amused-256"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("amused")
    models = write_tiny_amused(root / "repo")
    add_to_hub_cache(root / "hf", REPO, repo_files(root / "repo"))
    return {"root": root, "repo": root / "repo", "models": models}


@pytest.fixture
def offline(hub, tmp_path, monkeypatch):
    """The hub is offline and holds only the tiny repo; conversions go to a fresh cache."""
    return go_offline(monkeypatch, hub["root"] / "hf" / "hub", tmp_path / "cache")


def convert(source, out, *extra) -> dict:
    result = runner.invoke(app, ["convert", str(source), "--out", str(out), "--dtype",
                                 "float32", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "model_index.json").read_text())


def test_the_alias_converts_offline_as_the_local_folder_does(hub, offline, tmp_path):
    index = convert("amused-256", tmp_path / "alias")
    local = convert(hub["repo"], tmp_path / "local")
    assert index["alias"] == "amused-256" and index["license"] == "openrail++"
    assert local["alias"] is None and local["license"] == "openrail++"
    for key in ("family", "paradigm", "condition", "sampling"):
        assert index[key] == local[key]
    assert index["family"] == "amused" and index["condition"] == "text"
    assert index["sampling"]["steps"] == 12 and index["sampling"]["cfg"] == 10.0
    for part in ("transformer", "autoencoder", "text_encoder"):
        a, b = load_weights(tmp_path / "alias" / part), load_weights(tmp_path / "local" / part)
        assert set(a) == set(b) and a
        assert all(mx.array_equal(a[k], b[k]) for k in a), part
    assert sorted(p.name for p in (tmp_path / "alias" / "tokenizer").iterdir()) == \
        ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    source = json.loads((tmp_path / "alias" / "transformer" / "config.json").read_text())
    assert source["source"]["repo"] == REPO
    assert source["source"]["file"] == "transformer/diffusion_pytorch_model.safetensors"
    assert source["backbone"]["codebook_size"] == 32
    encoder = json.loads((tmp_path / "alias" / "text_encoder" / "config.json").read_text())
    assert encoder["model_type"] == "clip_text" and encoder["config"]["projection_dim"] == 16
    # the VQ-GAN's weights come from the store, float32
    ae = json.loads((tmp_path / "alias" / "autoencoder" / "config.json").read_text())
    assert ae["kind"] == "diffusers-vq" and ae["dtype"] == "float32"


def test_the_fp16_variant_converts_where_float32_is_absent_or_when_asked(hub, offline,
                                                                          tmp_path):
    write_tiny_amused(tmp_path / "half", fp16_only=True)
    convert(tmp_path / "half", tmp_path / "from-half")
    convert(hub["repo"], tmp_path / "asked", "--variant", "fp16")
    convert(hub["repo"], tmp_path / "full")
    for part in ("transformer", "text_encoder", "autoencoder"):
        full = load_weights(tmp_path / "full" / part)
        for out in ("from-half", "asked"):
            half = load_weights(tmp_path / out / part)
            assert all(half[k].dtype == mx.float32 for k in half), (out, part)
            # the fp16 file's values, widened: the float32 weights rounded to float16
            assert all(mx.array_equal(half[k], full[k].astype(mx.float16).astype(mx.float32))
                       for k in full), (out, part)
        assert not all(mx.array_equal(half[k], full[k]) for k in full), part
    record = json.loads((tmp_path / "asked" / "transformer" / "config.json").read_text())
    assert record["source"]["file"] == "transformer/diffusion_pytorch_model.fp16.safetensors"


def test_the_text_condition_equals_transformers_clip_with_projection(hub, tmp_path):
    """Prompts padded to 77 with the pad token, the tower's hidden_states[-2] and its projected
    pooled features; negatives default to "", and images index rows."""
    convert(hub["repo"], tmp_path / "p")
    pipe = Pipeline(tmp_path / "p")
    prompts = ["a red fox sleeping under a tree in the snow", "two cats playing"]
    entries = [Prompt(prompts[0]), Prompt(prompts[1], negative="blurry"), Prompt(prompts[0])]
    condition = pipe.text_condition(entries, pipe.plan()[0])
    tokenizer = reference_tokenizer(hub["repo"] / "tokenizer")
    texts = prompts + ["", "blurry"]
    ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    assert ids.shape == (4, 77)
    np.testing.assert_array_equal(np.array(pipe.prompting.ids(texts)), ids.numpy())
    with torch.no_grad():
        out = hub["models"]["text_encoder"](ids, output_hidden_states=True)
    states, pooled = out.hidden_states[-2].numpy(), out.text_embeds.numpy()
    ours = {"states": np.concatenate([np.array(condition.states),
                                      np.array(condition.null_states)]),
            "pooled": np.concatenate([np.array(condition.pooled),
                                      np.array(condition.null_pooled)])}
    for name, expected in (("states", states), ("pooled", pooled)):
        error = np.abs(ours[name] - expected).max() / np.abs(expected).max()
        assert error < 1e-4, (name, error)
    # the penultimate layer, not the final normed one
    assert np.abs(out.last_hidden_state.numpy() - states).max() > 0.1
    assert np.array(condition.images).tolist() == [0, 1, 0]


def test_a_quantized_conversion_quantizes_the_text_encoder_too(hub, tmp_path):
    index = convert(hub["repo"], tmp_path / "q", "--quantize", "8", "--group-size", "32")
    assert index["quantization"]["bits"] == 8 and index["quantization"]["modules"]
    encoder = json.loads((tmp_path / "q" / "text_encoder" / "config.json").read_text())
    assert encoder["quantization"]["bits"] == 8 and encoder["quantization"]["modules"]
    pipe = Pipeline(tmp_path / "q")
    assert pipe.text_encoder is not None
    result = runner.invoke(app, ["info", str(tmp_path / "q")])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "openrail++" in text and "text encoder" in text and "8-bit, group size 32" in text
    # a converted float folder requantizes, text encoder and tokenizer included
    convert(hub["repo"], tmp_path / "f")
    again = convert(tmp_path / "f", tmp_path / "q4", "--quantize", "4", "--group-size", "32")
    assert again["quantization"]["bits"] == 4
    encoder = json.loads((tmp_path / "q4" / "text_encoder" / "config.json").read_text())
    assert encoder["quantization"]["bits"] == 4
    assert (tmp_path / "q4" / "tokenizer" / "vocab.json").is_file()
    Pipeline(tmp_path / "q4")


def test_models_lists_the_amused_aliases_with_their_license():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    lines = {line.split()[1]: line for line in result.output.splitlines()
             if line.startswith("│ amused")}
    assert set(lines) == {"amused-256", "amused-512"}
    assert "256px" in lines["amused-256"] and "512px" in lines["amused-512"]
    assert "604M" in lines["amused-256"] and "608M" in lines["amused-512"]
    text = " ".join(result.output.split())
    assert "openrail++" in text and "janus" in text  # the license column of the text models


@pytest.mark.parametrize("part, phrase", [
    ("vqvae", "has no vqvae/ folder"),
    ("tokenizer", "has no tokenizer/ folder"),
    ("text_encoder", "has no text_encoder/ folder"),
    ("transformer", "has no transformer/ folder"),
])
def test_a_local_folder_without_a_component_is_refused_and_nothing_written(tmp_path, part,
                                                                          phrase):
    write_tiny_amused(tmp_path / "repo", leave_out=(part,))
    result = runner.invoke(app, ["convert", str(tmp_path / "repo"), "--out",
                                 str(tmp_path / "out")])
    assert_refused(result, phrase)
    assert f"download the {part}/ folder of amused/amused-256" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scheduler, phrase", [
    ({"masking_schedule": "linear"}, "masking schedule 'linear'"),
    ({"mask_token_id": MASK_ID + 7}, f"mask_token_id {MASK_ID + 7}, which the transformer "
                                     "cannot embed"),
    ({"mask_token_id": 5}, "mask_token_id 5, which the transformer cannot embed"),
])
def test_a_scheduler_the_sampler_cannot_run_is_refused(tmp_path, scheduler, phrase):
    write_tiny_amused(tmp_path / "repo", scheduler=scheduler)
    result = runner.invoke(app, ["convert", str(tmp_path / "repo"), "--out",
                                 str(tmp_path / "out")])
    assert_refused(result, phrase)
    assert not (tmp_path / "out").exists()


def test_variant_and_other_options_are_refused_where_they_do_not_apply(hub, tmp_path):
    result = runner.invoke(app, ["convert", str(hub["repo"]), "--out", str(tmp_path / "o"),
                                 "--autoencoder", "x.pt"])
    assert_refused(result, "leave out --autoencoder")
    result = runner.invoke(app, ["convert", str(hub["repo"]), "--out", str(tmp_path / "o"),
                                 "--variant", "bf16"])
    assert_refused(result, "unknown weights variant 'bf16'")
    result = runner.invoke(app, ["convert", "dit-xl-2-256", "--out", str(tmp_path / "o"),
                                 "--variant", "fp16"])
    assert_refused(result, "--variant picks the weights of a diffusers pipeline repo")
    assert not (tmp_path / "o").exists()


def test_a_prompt_longer_than_77_tokens_is_cut_with_a_warning(hub, tmp_path, caplog):
    convert(hub["repo"], tmp_path / "p")
    pipe = Pipeline(tmp_path / "p")
    long = " ".join(["a red fox sleeping under a tree in the snow"] * 12)
    with caplog.at_level("WARNING"):
        condition = pipe.text_condition([Prompt(long)], pipe.plan()[0])
    assert condition.states.shape[1] == 77
    assert any("cut to the 77 tokens" in r.getMessage() for r in caplog.records)
    ids = np.array(pipe.prompting.ids([long]))[0]
    tokenizer = reference_tokenizer(hub["repo"] / "tokenizer")
    expected = tokenizer([long], padding="max_length", max_length=77, truncation=True).input_ids
    np.testing.assert_array_equal(ids, expected[0])
