"""Sana end to end on a tiny hub repo (tests/sana_repo_files.py): conversion (local folder, the
alias offline through a hub cache, shards, variants, quantization, the scheduler's settings),
the converted pipeline against diffusers' SanaPipeline from the same prompts and initial
latents, and the CLI's refusals."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gemma_files import reference_tokenizer
from hubcache import add_to_hub_cache, go_offline
from test_janus_convert import table_rows
from amused_files import repo_files
from sana_repo_files import DOWNSAMPLE, GRID, LATENT_CHANNELS, SCHEDULER, write_tiny_sana
from mlx_imgen import paradigms
from mlx_imgen.cli.app import app
from mlx_imgen.paradigms.keys import keys_of
from mlx_imgen.pipeline import Pipeline
from mlx_imgen.prompts import Prompt
from mlx_imgen.weights.shards import load_weights

runner = CliRunner()
REPO = "Efficient-Large-Model/Sana_600M_512px_diffusers"
PROMPT = "a red fox asleep under a snowy pine tree"
GUIDANCE, STEPS = 4.5, 4


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("sana")
    models = write_tiny_sana(root / "repo")
    add_to_hub_cache(root / "hf", REPO, repo_files(root / "repo"))
    return {"root": root, "repo": root / "repo", "models": models}


@pytest.fixture(scope="module")
def converted(hub, tmp_path_factory):
    out = tmp_path_factory.mktemp("sana_converted") / "pipe"
    result = runner.invoke(app, ["convert", str(hub["repo"]), "--out", str(out), "--dtype",
                                 "float32"])
    assert result.exit_code == 0, result.output
    return out


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def rel(ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def diffusers_pipeline(hub, scheduler: dict):
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, SanaPipeline

    kinds = {"DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
             "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler}
    config = {k: v for k, v in scheduler.items() if not k.startswith("_")}
    models = hub["models"]
    return SanaPipeline(tokenizer=reference_tokenizer(hub["repo"] / "tokenizer"),
                        text_encoder=models["text_encoder"], transformer=models["transformer"],
                        vae=models["vae"],
                        scheduler=kinds[scheduler["_class_name"]].from_config(config))


EULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.32.0",
         "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


@pytest.mark.parametrize("scheduler, sampler", [(SCHEDULER, "dpm-solver"), (EULER, "euler")])
def test_the_converted_pipeline_runs_sana_pipelines_steps(hub, converted, scheduler, sampler):
    """The same prompt, empty negative prompt and initial latents through diffusers'
    SanaPipeline (its tokenizer, instruction prefix, Gemma, transformer and scheduler) and the
    converted MLX pipeline: the final latents and the decoded images agree."""
    noise = torch.randn((1, LATENT_CHANNELS, GRID, 2 * GRID),
                        generator=torch.Generator().manual_seed(3))
    pipe = diffusers_pipeline(hub, scheduler)
    with torch.no_grad():
        latents = pipe(PROMPT, negative_prompt="", num_inference_steps=STEPS,
                       guidance_scale=GUIDANCE, latents=noise.clone(),
                       height=GRID * DOWNSAMPLE, width=2 * GRID * DOWNSAMPLE,
                       use_resolution_binning=False, output_type="latent").images
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample

    ours = Pipeline(converted)
    plan, _ = ours.plan(sampler=sampler, steps=STEPS, cfg=GUIDANCE)
    condition = ours.text_condition([Prompt(PROMPT)], plan)
    x = paradigms.generate(ours.transformer, condition, plan, key=keys_of([(0, 0)]),
                           noise=mx.array(noise.permute(0, 2, 3, 1).numpy()))
    reference = latents.permute(0, 2, 3, 1).numpy()
    assert rel(x, reference) <= 1e-3, rel(x, reference)
    decoded = ours.decode_samples(x)
    assert rel(decoded, image.permute(0, 2, 3, 1).numpy()) <= 1e-3


def test_the_alias_converts_offline_as_the_local_folder_does(hub, converted, tmp_path,
                                                            monkeypatch):
    go_offline(monkeypatch, hub["root"] / "hf" / "hub", tmp_path / "cache")
    out = tmp_path / "alias"
    result = invoke("convert", "sana-0.6b-512", "--out", out, "--dtype", "float32")
    assert result.exit_code == 0, result.output
    index = json.loads((out / "model_index.json").read_text())
    local = json.loads((converted / "model_index.json").read_text())
    assert index["alias"] == "sana-0.6b-512" and local["alias"] is None
    assert index["license"] == local["license"] == "NVIDIA non-commercial + Gemma terms"
    assert index["sampling"] == local["sampling"] == {
        "sampler": "dpm-solver", "steps": 20, "cfg": 4.5, "shift": 3.0, "solver_order": 2}
    for part in ("transformer", "autoencoder", "text_encoder"):
        a, b = load_weights(out / part), load_weights(converted / part)
        assert set(a) == set(b) and a
        assert all(mx.array_equal(a[k], b[k]) for k in a), part
    encoder = json.loads((out / "text_encoder" / "config.json").read_text())
    assert encoder["model_type"] == "gemma2"
    assert [s["file"] for s in encoder["source"]["shards"]] == [
        "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors"]
    ae = json.loads((out / "autoencoder" / "config.json").read_text())
    assert ae["kind"] == "dc-ae" and ae["dtype"] == "float32"
    rows = table_rows(invoke("models").output)
    assert {"sana-0.6b-512", "sana-1.6b-1024"} <= set(rows)
    # wrapped cells interleave their lines: the license's words, each whole
    assert all(w in rows["sana-0.6b-512"] for w in ("NVIDIA", "non-commercial", "Gemma"))
    assert "0.66" in rows["sana-1.6b-1024"] and "1024px" in rows["sana-1.6b-1024"]
    assert "NVIDIA non-commercial + Gemma terms" in invoke("info", out).output


def test_an_euler_scheduler_config_and_its_shift_become_the_defaults(tmp_path):
    write_tiny_sana(tmp_path / "repo", scheduler={**EULER, "shift": 2.5})
    result = invoke("convert", tmp_path / "repo", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    sampling = json.loads((tmp_path / "out" / "model_index.json").read_text())["sampling"]
    assert sampling["sampler"] == "euler" and sampling["shift"] == 2.5


@pytest.mark.parametrize("scheduler, phrase", [
    ({**SCHEDULER, "use_karras_sigmas": True}, "use_karras_sigmas"),
    ({**SCHEDULER, "prediction_type": "epsilon"}, "prediction_type"),
    ({"_class_name": "DDIMScheduler"}, "DDIMScheduler"),
    ({**SCHEDULER, "flow_shift": float("inf")}, "time shift"),
])
def test_a_scheduler_the_sampler_cannot_run_is_refused(tmp_path, scheduler, phrase):
    write_tiny_sana(tmp_path / "repo", scheduler=scheduler)
    result = invoke("convert", tmp_path / "repo", "--out", tmp_path / "out")
    assert result.exit_code == 2 and phrase in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, phrase", [
    ("shard", "model-00002-of-00002.safetensors"),
    ("text_encoder", "text_encoder/ folder"),
    ("tokenizer", "tokenizer"),
    ("vae", "vae/ folder"),
])
def test_a_missing_part_is_one_sentence_and_nothing_written(tmp_path, damage, phrase):
    if damage == "shard":
        write_tiny_sana(tmp_path / "repo")
        (tmp_path / "repo" / "text_encoder" / "model-00002-of-00002.safetensors").unlink()
    else:
        write_tiny_sana(tmp_path / "repo", leave_out=(damage,))
    result = invoke("convert", tmp_path / "repo", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert phrase in message and "Traceback" not in message
    assert not (tmp_path / "out").exists()


def test_an_8_bit_transformer_with_a_4_bit_text_encoder(hub, tmp_path):
    out = tmp_path / "q"
    result = invoke("convert", hub["repo"], "--out", out, "--quantize", "8",
                    "--text-quantize", "4", "--group-size", "32")
    assert result.exit_code == 0, result.output
    transformer = json.loads((out / "transformer" / "config.json").read_text())
    encoder = json.loads((out / "text_encoder" / "config.json").read_text())
    assert transformer["quantization"]["bits"] == 8 and encoder["quantization"]["bits"] == 4
    result = invoke("generate", out, "--prompt", PROMPT, "--steps", 2, "--out",
                    tmp_path / "q.png")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "q.png").size == (GRID * DOWNSAMPLE, GRID * DOWNSAMPLE)
    result = invoke("convert", hub["repo"], "--out", tmp_path / "bad", "--text-quantize", "7")
    assert result.exit_code == 2 and "--text-quantize" in result.output


def test_width_and_height_choose_the_latent_grid(converted, tmp_path):
    out = tmp_path / "wide.png"
    result = invoke("generate", converted, "--prompt", PROMPT, "--steps", 2, "--width", 48,
                    "--height", 24, "--out", out)
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    assert image.size == (48, 24)
    assert "--width 48 --height 24" in image.text["regenerate"]


@pytest.mark.parametrize("args, phrase", [
    (["--width", 50], "--width 50 is not a multiple of 8"),
    (["--height", 4], "--height 4 is not a multiple of 8"),
    (["--cfg", "nan"], "--cfg"),
    (["--shift", "inf"], "--shift inf is not a finite number"),
    (["--shift", "0"], "--shift 0.0 is not positive"),
    (["--sampler", "heun"], "Sana samples with dpm-solver or euler"),
    (["--temperature", 2], "--temperature does not apply"),
])
def test_bad_generate_options_are_one_sentence_and_no_image(converted, tmp_path, args,
                                                           phrase):
    out = tmp_path / "bad.png"
    result = invoke("generate", converted, "--prompt", PROMPT, "--steps", 2, *args,
                    "--out", out)
    assert result.exit_code == 2, result.output
    assert phrase in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_a_prompt_over_the_limit_is_cut_with_a_warning(converted, tmp_path, caplog):
    import logging

    long_prompt = " ".join([PROMPT] * 80)
    with caplog.at_level(logging.WARNING):
        result = invoke("generate", converted, "--prompt", long_prompt, "--steps", 1,
                        "--out", tmp_path / "long.png")
    assert result.exit_code == 0, result.output
    assert any("cut" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "long.png").is_file()


def test_the_fp16_variant_converts_where_float32_is_absent_or_when_asked(tmp_path):
    models = write_tiny_sana(tmp_path / "repo", fp16_transformer=True)
    result = invoke("convert", tmp_path / "repo", "--out", tmp_path / "half", "--variant",
                    "fp16", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    source = json.loads((tmp_path / "half" / "transformer" / "config.json").read_text())
    assert source["source"]["file"] == "transformer/diffusion_pytorch_model.fp16.safetensors"
    weights = load_weights(tmp_path / "half" / "transformer")
    table = weights["blocks.0.scale_shift_table"]
    expected = models["transformer"].transformer_blocks[0].scale_shift_table.detach()
    # float16's rounding of the published float32 values, widened again
    assert np.array_equal(np.array(table).reshape(-1),
                          expected.half().float().numpy().reshape(-1))
    (tmp_path / "repo" / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    result = invoke("convert", tmp_path / "repo", "--out", tmp_path / "only")
    assert result.exit_code == 0, result.output
    result = invoke("convert", tmp_path / "repo", "--out", tmp_path / "bad", "--variant", "bf8")
    assert result.exit_code == 2 and "unknown weights variant" in result.output
