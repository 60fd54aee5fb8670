"""`mlx-imgen profile sana-0.6b-512 --random-weights` end to end on a TINY random Sana (the
family's config and its Gemma-2 shrunk, the DC-AE too: the published Gemma alone is 10.5 GB in
float32): the stand-in prompts are laid out as GemmaPrompts lays out real ones and reach the
transformer as a masked CrossAttentionText, the preset's DPM-Solver plan runs, the DC-AE
decodes, and the report's FLOPs are flops.py's (transformer passes, Gemma rows, decode)."""

import dataclasses
import json

import mlx.core as mx
import pytest
from typer.testing import CliRunner

from mlx_imgen import families
from mlx_imgen.autoencoders import AUTOENCODERS
from mlx_imgen.cli.app import app
from mlx_imgen.flops import gemma_text_flops, sana_forward_flops
from mlx_imgen.paradigms import DPMSolverPlan
from mlx_imgen.sana import SanaConfig
from mlx_imgen.text.gemma import GemmaConfig, GemmaTextEncoder
from mlx_imgen.text.gemma_prompts import (INSTRUCTION_TOKENS, MAX_TOKENS, GemmaStandIn,
                                          instructed_length)

TINY = SanaConfig(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                  num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=8,
                  cross_attention_dim=16, caption_channels=32, sample_size=4)
TINY_GEMMA = GemmaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         vocab_size=512)
TINY_DC_AE = dict(latent_channels=4, attention_head_dim=8,
                  decoder_block_types=("ResBlock", "EfficientViTBlock"),
                  decoder_block_out_channels=(8, 16), decoder_layers_per_block=(1, 1),
                  decoder_qkv_multiscales=((), (5,)))


@pytest.fixture
def tiny_sana_family(monkeypatch):
    family = families.get("sana")
    monkeypatch.setitem(families.FAMILIES, "sana", dataclasses.replace(
        family, config_for=lambda size, image_size: TINY, text_encoder=("gemma2", TINY_GEMMA)))
    dc_ae = AUTOENCODERS["dc-ae"]
    monkeypatch.setitem(AUTOENCODERS, "dc-ae", dataclasses.replace(
        dc_ae, config=lambda: dc_ae.config(**TINY_DC_AE)))


def test_the_stand_in_is_laid_out_as_gemma_prompts_lay_out_a_prompt():
    encoder = GemmaTextEncoder(TINY_GEMMA)
    stand_in = GemmaStandIn(encoder, 3)
    length = instructed_length(INSTRUCTION_TOKENS)
    assert stand_in.row_lengths == (length, MAX_TOKENS) == (INSTRUCTION_TOKENS + 298, 300)
    text = stand_in.encode()
    assert text.states.shape == text.null_states.shape == (3, MAX_TOKENS, 32)
    assert text.pooled is None and text.mask.shape == (3, MAX_TOKENS)
    # BOS and the prompt's tokens at the end of the prefix are kept; the empty negative is BOS
    assert text.mask[0].tolist()[:1] == [1] and 1 < int(text.mask[0].sum()) < 40
    assert text.null_mask.sum(axis=1).tolist() == [1, 1, 1]
    assert stand_in.ids.shape == (3, length) and len({tuple(r) for r in stand_in.ids.tolist()}) == 3


def test_profile_of_a_random_sana_runs_and_reports_flops_py(tiny_sana_family, tmp_path):
    out = tmp_path / "sana.json"
    result = CliRunner().invoke(app, [
        "profile", "sana-0.6b-512", "--random-weights", "--batch-sizes", "2", "--trials", "1",
        "--steps", "3", "--step-budget", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    [row] = json.loads(out.read_text())["results"]
    assert row["status"] == "ok" and row["paradigm"] == "diffusion" and row["steps"] == 3
    assert row["forward_passes_per_image"] == 6 and row["cfg_scale"] == 4.5
    assert row["stages_s"]["conditioning"] > 0 and row["stages_s"]["decode"] > 0
    transformer = 2 * 3 * sana_forward_flops(TINY, 4, 4, MAX_TOKENS).total
    text = (gemma_text_flops(TINY_GEMMA, instructed_length(INSTRUCTION_TOKENS)).total
            + gemma_text_flops(TINY_GEMMA, MAX_TOKENS).total)
    decode = AUTOENCODERS["dc-ae"].decode_flops(AUTOENCODERS["dc-ae"].config(), 4, 4)
    breakdown = row["gflops_breakdown"]
    assert breakdown["transformer_linear"] + breakdown["transformer_attention"] == \
        pytest.approx(transformer / 1e9, rel=1e-12)
    assert breakdown["text_encoder"] == pytest.approx(text / 1e9, rel=1e-12)
    assert breakdown["decode"] == pytest.approx(decode / 1e9, rel=1e-12) and decode > 0
    assert row["gflops_per_image"] == pytest.approx((transformer + text + decode) / 1e9,
                                                    rel=1e-12)


def test_the_random_pipeline_plans_the_preset_dpm_solver(tiny_sana_family):
    from mlx_imgen.pipeline import Pipeline

    pipe = Pipeline.random("sana-0.6b-512")
    plan, _ = pipe.plan()
    assert isinstance(plan, DPMSolverPlan) and plan.steps == 20
    stand_in = pipe.family.stand_in_text(pipe.text_encoder, 1)
    text = stand_in.encode()
    noise = mx.zeros((2, 4, 4, 4))
    out = pipe.transformer(noise, timesteps=mx.array([500.0, 500.0]),
                           context=mx.concatenate([text.states, text.null_states]),
                           context_mask=mx.concatenate([text.mask, text.null_mask]))
    assert out.shape == (2, 4, 4, 4)
