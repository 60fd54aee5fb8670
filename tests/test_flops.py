import mlx.nn as nn
import pytest

from mlx_imgen.backbone import BackboneConfig, Transformer
from mlx_imgen.flops import forward_flops, plan_flops
from mlx_imgen.grid import GRID_SIZES, default_plan, grid_config
from mlx_imgen.paradigms import PARADIGMS, NextTokenPlan

PER_SAMPLE = ("modulation", "time_embed")


def walked_flops(model: Transformer, length: int, context: int, head_rows: int,
                 image_tokens: int) -> float:
    """Count by walking the built model: every Linear and Conv2d, plus QK^T and AV per block."""
    total = 0.0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            out_dims, in_dims = module.weight.shape
            if any(tag in name for tag in PER_SAMPLE):
                rows = 1
            elif name == "head":
                rows = head_rows
            else:
                rows = length
            total += 2 * rows * in_dims * out_dims
        elif isinstance(module, nn.Conv2d):
            out_ch, kh, kw, in_ch = module.weight.shape
            total += 2 * image_tokens * out_ch * kh * kw * in_ch
    for block in model.blocks:
        inner = block.attn.heads * block.attn.head_dim
        total += 2 * 2 * length * context * inner
    return total


@pytest.mark.parametrize("size", list(GRID_SIZES))
@pytest.mark.parametrize("paradigm", PARADIGMS)
def test_grid_forward_flops_equal_a_walk_over_the_built_model(paradigm, size):
    cfg = grid_config(paradigm, size)
    model = Transformer(cfg)  # parameters stay lazy: only shapes are read
    head_rows = cfg.seq_len if cfg.causal else cfg.num_tokens
    expected = walked_flops(model, cfg.seq_len, cfg.seq_len, head_rows, cfg.num_tokens)
    assert forward_flops(cfg).total == pytest.approx(expected, rel=1e-12)


def test_kv_cache_decode_step_counts_attention_over_its_context():
    cfg = grid_config("next-token", "S")
    model = Transformer(cfg)
    for context in (2, 100, 257):
        expected = walked_flops(model, 1, context, 1, 1)
        assert forward_flops(cfg, 1, context).total == pytest.approx(expected, rel=1e-12)
    plan = NextTokenPlan(num_tokens=cfg.num_tokens, cfg_scale=4.0)
    steps = [walked_flops(model, 1, 1, 1, 0)] + [walked_flops(model, 1, 1 + i, 1, 1)
                                                 for i in range(1, cfg.num_tokens)]
    assert plan_flops(cfg, plan).total == pytest.approx(2 * sum(steps), rel=1e-12)


def test_dit_xl_2_at_256px_is_237_gflops_per_forward():
    cfg = BackboneConfig(depth=28, width=1152, heads=16, grid_size=16, input="patches",
                         in_channels=4, patch_size=2, out_channels=8, conditioning="adaln",
                         timestep=True, positions="sincos2d", norm_affine=False,
                         final_norm_affine=False, head_bias=True)
    assert forward_flops(cfg).total / 1e9 == pytest.approx(237.0, rel=0.02)


def test_plan_flops_scale_with_passes_and_guidance():
    cfg = grid_config("diffusion", "S")
    plan = default_plan("diffusion", cfg, steps=10)
    assert plan_flops(cfg, plan).total == pytest.approx(20 * forward_flops(cfg).total)
    plan.cfg_scale = 1.0
    plan.solver = "heun"
    assert plan_flops(cfg, plan).total == pytest.approx(20 * forward_flops(cfg).total)


def test_next_token_is_the_cheapest_paradigm_per_image_on_the_grid():
    flops = {p: plan_flops(grid_config(p, "B"), default_plan(p, grid_config(p, "B"))).total
             for p in PARADIGMS}
    assert flops["next-token"] < flops["masked-token"] < flops["diffusion"]
