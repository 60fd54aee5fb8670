"""Sana's FLOPs (flops.sana_forward_flops, gemma_text_flops) against torch's FlopCounterMode on
the tiny diffusers SanaTransformer2DModel and the tiny transformers Gemma2Model, and plan_flops
for Sana's diffusion plans.

FlopCounterMode counts matmuls and convolutions (attention runs on torch's math kernel, as
matmuls, so it sees those too); what it leaves out (norms, activations, the Mix-FFN's gate,
the modulation's adds, softmax, the linear attention's division, the embedding lookup) the
analytic count leaves out too, so the two are equal, not close. A batch of one: diffusers'
timestep MLP runs once per batch row, the analytic count once per sample."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gemma_files import tiny_gemma
from sana_files import TEXT_LENGTH, inputs, tiny_config, tiny_sana
from mlx_imgen.families.sana import config_from_json
from mlx_imgen.flops import forward_flops, gemma_text_flops, plan_flops, sana_forward_flops
from mlx_imgen.paradigms import DPMSolverPlan, FlowPlan
from mlx_imgen.text.gemma import GemmaConfig


def counted(fn) -> int:
    # the math kernel of scaled_dot_product_attention runs as matmuls, which the counter sees;
    # it has no count for the CPU's fused kernel and would leave cross-attention's QK^T and AV out
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        with torch.no_grad():
            fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("height, width", [(4, 6), (5, 3)])
def test_sana_forward_flops_equal_flop_counter_mode(height, width):
    model = tiny_sana()
    config = config_from_json(dict(model.config))
    batch = inputs(tiny_config(), batch=1, height=height, width=width)
    expected = counted(lambda: model(**batch))
    assert sana_forward_flops(config, height, width, TEXT_LENGTH).total == expected


def test_sana_attention_share_is_the_linear_kernel_and_the_cross_attention():
    config = config_from_json(tiny_config())
    # 2 layers: 4 heads of 8 over 24 tokens (2 N d (d + 1) each), 2 x 16 cross dims x 6 keys
    assert sana_forward_flops(config, 4, 6, TEXT_LENGTH).attention == \
        2 * (2 * 2 * 24 * 4 * 8 * 9 + 2 * 2 * 24 * 6 * 32)


def test_gemma_text_flops_equal_flop_counter_mode():
    model = tiny_gemma()
    config = GemmaConfig.from_hf(model.config.to_dict())
    for length in (7, 19):
        ids = torch.arange(length)[None] % 500 + 4
        expected = counted(lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids)))
        assert gemma_text_flops(config, length).total == expected


def test_plan_flops_are_steps_times_guidance_times_one_pass_at_the_caption_length():
    config = config_from_json(tiny_config())
    one = sana_forward_flops(config, 4, 4, 300).total
    assert forward_flops(config).total == one  # the trained latent size, Sana's 300 states
    dpm = DPMSolverPlan(steps=5, cfg_scale=4.5)
    assert plan_flops(config, dpm).total == 2 * 5 * one
    euler = FlowPlan(steps=3, cfg_scale=1.0, schedule="discrete", shift=3.0)
    assert plan_flops(config, euler).total == 3 * one
    assert plan_flops(config, dpm, 120).total == 2 * 5 * sana_forward_flops(config, 4, 4, 120).total


def test_sana_600m_at_512px_is_about_a_tenth_of_a_teraflop_per_pass():
    from mlx_imgen.families.sana import config_for

    flops = forward_flops(config_for("0.6b", 512)).total / 1e9
    assert 100 < flops < 400, flops
