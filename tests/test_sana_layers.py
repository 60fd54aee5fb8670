"""Sana's two new shared layers against diffusers' own modules, every parameter random: the ReLU
linear attention (nn.Attention's relu_linear kernel vs Attention + SanaLinearAttnProcessor2_0)
and the Mix-FFN (nn.MixFFN vs GLUMBConv); weights go through key-map rules as a converter's
would. Batch 2, 3 x 5 token grids (non-square)."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention as DiffusersAttention
from diffusers.models.attention_processor import SanaLinearAttnProcessor2_0
from diffusers.models.transformers.sana_transformer import GLUMBConv

from mlx_imgen.nn import Attention, MixFFN, relu_linear_attention
from mlx_imgen.weights.keymap import (Rule, concatenate_rows, conv_weight, map_keys,
                                      pointwise_conv_as_linear)
from uvit_files import randomize_

DIMS, HEADS, HEAD_DIM = 24, 3, 8  # inner width 24; Sana-1600M: 2240 = 70 heads x 32
HEIGHT, WIDTH = 3, 5


def _relative_error(ours: mx.array, reference: torch.Tensor) -> float:
    expected = reference.detach().float().numpy()
    error = np.abs(np.array(ours.astype(mx.float32)) - expected).max()
    return float(error / np.abs(expected).max())


def _state(module: torch.nn.Module) -> dict:
    return {k: mx.array(v.detach().numpy()) for k, v in module.state_dict().items()}


def _attention_rules(fused: bool) -> list[Rule]:
    projections = ([Rule((r"to_q\.(weight|bias)", r"to_k\.(weight|bias)", r"to_v\.(weight|bias)"),
                         r"qkv.\1", concatenate_rows)] if fused
                   else [Rule(r"to_([qkv])\.(weight|bias)", r"\1.\2")])
    return projections + [Rule(r"to_out\.0\.(weight|bias)", r"out.\1")]


def _attention_pair(*, qkv_bias: bool, fused: bool, seed: int = 0):
    # Sana's self-attention: attention_bias false in the released configs (q/k/v without bias),
    # the output projection with one
    theirs = randomize_(DiffusersAttention(query_dim=DIMS, heads=HEADS, dim_head=HEAD_DIM,
                                           bias=qkv_bias,
                                           processor=SanaLinearAttnProcessor2_0()), seed)
    ours = Attention(DIMS, HEADS, head_dim=HEAD_DIM, fused_qkv=fused, qkv_bias=qkv_bias,
                     out_bias=True, kernel="relu_linear")
    ours.load_weights(list(map_keys(_state(theirs), _attention_rules(fused)).items()), strict=True)
    return ours, theirs


def _tokens(seed: int = 1, length: int = HEIGHT * WIDTH, dims: int = DIMS) -> torch.Tensor:
    return torch.randn((2, length, dims), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("qkv_bias, fused", [(False, True), (False, False), (True, True)])
def test_relu_linear_attention_matches_diffusers(qkv_bias, fused):
    ours, theirs = _attention_pair(qkv_bias=qkv_bias, fused=fused)
    x = _tokens()
    with torch.no_grad():
        expected = theirs(x)
    assert _relative_error(ours(mx.array(x.numpy())), expected) < 1e-4


def test_relu_linear_cross_attention_matches_diffusers():
    """The processor also takes a context; keys and values then come from it."""
    theirs = randomize_(DiffusersAttention(query_dim=DIMS, cross_attention_dim=16, heads=HEADS,
                                           dim_head=HEAD_DIM,
                                           processor=SanaLinearAttnProcessor2_0()), 3)
    ours = Attention(DIMS, HEADS, head_dim=HEAD_DIM, kv_dims=16, out_bias=True,
                     kernel="relu_linear")
    ours.load_weights(list(map_keys(_state(theirs), _attention_rules(False)).items()), strict=True)
    x, context = _tokens(), _tokens(seed=2, length=7, dims=16)
    with torch.no_grad():
        expected = theirs(x, encoder_hidden_states=context)
    out = ours(mx.array(x.numpy()), context=mx.array(context.numpy()))
    assert _relative_error(out, expected) < 1e-4


def test_relu_linear_attention_float16_matches_diffusers_float32():
    """float16 weights and input: the sums run in float32, so only float16 rounding of the
    weights, input and output is left against the float32 reference."""
    ours, theirs = _attention_pair(qkv_bias=False, fused=True)
    ours.set_dtype(mx.float16)
    x = _tokens()
    with torch.no_grad():
        expected = theirs(x.half().float())
    out = ours(mx.array(x.numpy()).astype(mx.float16))
    assert out.dtype == mx.float16
    assert _relative_error(out, expected) < 5e-3


def test_relu_linear_kernel_sums_in_float32():
    """float16 q, k, v whose normaliser (about 8 x 30 x 64 x 30) passes float16's 65504: summed in
    float16 it would be inf and the output inf / inf; in float32 it matches a float64 reference."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.uniform(20, 40, (2, 2, 64, 8)).astype(np.float16) for _ in range(3))
    out = relu_linear_attention(*(mx.array(a) for a in (q, k, v)))
    assert out.dtype == mx.float16
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    expected = (q64 @ (k64.swapaxes(-1, -2) @ v64)) / (q64 @ k64.sum(axis=2)[..., None])
    got = np.array(out.astype(mx.float32))
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-3


def test_relu_linear_attention_refuses_mask_and_cache():
    ours, _ = _attention_pair(qkv_bias=False, fused=True)
    x = mx.zeros((1, 4, DIMS))
    with pytest.raises(ValueError, match="relu_linear attention takes no mask"):
        ours(x, mask="causal")
    with pytest.raises(ValueError, match="unknown attention kernel"):
        Attention(DIMS, HEADS, kernel="relu")


MIX_FFN_RULES = [
    Rule(r"conv_inverted\.weight", "expand.weight", pointwise_conv_as_linear),
    Rule(r"conv_inverted\.bias", "expand.bias"),
    Rule(r"conv_depth\.(weight)", r"depthwise.\1", conv_weight),
    Rule(r"conv_depth\.(bias)", r"depthwise.\1"),
    Rule(r"conv_point\.weight", "project.weight", pointwise_conv_as_linear),
]


@pytest.mark.parametrize("mlp_ratio", [2.5, 4])
def test_mix_ffn_matches_diffusers_glumbconv(mlp_ratio):
    # as Sana's block builds it: no norm, no residual inside (the block adds its own, gated)
    theirs = randomize_(GLUMBConv(DIMS, DIMS, mlp_ratio, norm_type=None,
                                  residual_connection=False), 4)
    ours = MixFFN(DIMS, int(mlp_ratio * DIMS))
    ours.load_weights(list(map_keys(_state(theirs), MIX_FFN_RULES).items()), strict=True)
    x = _tokens(seed=5)
    with torch.no_grad():  # the block's own reshape: tokens to (B, C, H, W) and back
        grid = x.unflatten(1, (HEIGHT, WIDTH)).permute(0, 3, 1, 2)
        expected = theirs(grid).flatten(2, 3).permute(0, 2, 1)
    assert _relative_error(ours(mx.array(x.numpy()), HEIGHT, WIDTH), expected) < 1e-4


def test_mix_ffn_refuses_a_grid_that_does_not_fit_the_tokens():
    with pytest.raises(ValueError, match="15 tokens for a 5 x 5 grid"):
        MixFFN(DIMS, 8)(mx.zeros((1, HEIGHT * WIDTH, DIMS)), 5, 5)
