"""The fused CPU activations are the plain formulas to fp32 rounding, extremes included."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_imgen.nn.activations import (gelu_tanh, gelu_tanh_fused, quick_gelu, quick_gelu_fused,
                                       silu_gate, silu_gate_fused, softmax_fused)
from mlx_imgen.nn.attention import attention_cpu

SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 1e-7, -1e-7, 3.0, -3.0, 5.0, -5.0, 9.0, -9.0,
           20.0, -20.0, 88.0, -88.0, 1e4, -1e4, 1e13, -1e13, 1e30, -1e30, 3e38, -3e38,
           np.inf, -np.inf, np.nan]


def inputs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal(20000) * scale for scale in (1.0, 4.0, 30.0, 1e3)]
    parts += [np.linspace(-15, 15, 30001), np.array(SPECIAL)]
    return np.concatenate(parts).astype(np.float32)


def assert_same_function(fast: np.ndarray, plain: np.ndarray, rtol=1e-6, atol=1e-6):
    nan_fast, nan_plain = np.isnan(fast), np.isnan(plain)
    assert (nan_fast == nan_plain).all(), "NaN where the plain formula has none, or vice versa"
    inf = np.isinf(plain)
    assert (fast[inf] == plain[inf]).all()
    finite = ~nan_plain & ~inf
    np.testing.assert_allclose(fast[finite], plain[finite], rtol=rtol, atol=atol)


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_gelu_is_gelu_tanh(seed):
    x = mx.array(inputs(seed))
    with mx.stream(mx.cpu):
        fast, plain = gelu_tanh_fused(x), nn.gelu_approx(x)
        assert_same_function(np.array(fast), np.array(plain))


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_quick_gelu_is_x_sigmoid(seed):
    x = mx.array(inputs(seed))
    with mx.stream(mx.cpu):
        fast, plain = quick_gelu_fused(x), x * mx.sigmoid(1.702 * x)
        assert_same_function(np.array(fast), np.array(plain))


@pytest.mark.parametrize("seed", [0, 1])
def test_fused_silu_gate_is_silu_times_up(seed):
    gate = inputs(seed)
    up = np.random.default_rng(seed + 10).permutation(inputs(seed + 20)[:gate.size])
    gate, up = mx.array(gate), mx.array(up)
    with mx.stream(mx.cpu):
        fast, plain = silu_gate_fused(gate, up), nn.silu(gate) * up
        assert_same_function(np.array(fast), np.array(plain))


@pytest.mark.parametrize("dtype, tol", [(mx.float16, 2e-3), (mx.bfloat16, 1.6e-2)])
def test_fused_activations_in_half_precision(dtype, tol):
    x = mx.array(np.random.default_rng(3).standard_normal(50000).astype(np.float32) * 4).astype(dtype)
    with mx.stream(mx.cpu):
        for fast, plain in [(gelu_tanh_fused(x), nn.gelu_approx(x)),
                            (quick_gelu_fused(x), x * mx.sigmoid(1.702 * x)),
                            (silu_gate_fused(x, x[::-1]), nn.silu(x) * x[::-1])]:
            assert fast.dtype == plain.dtype == dtype
            assert_same_function(np.array(fast.astype(mx.float32)), np.array(plain.astype(mx.float32)),
                                 rtol=tol, atol=tol)


def test_cpu_device_takes_the_fused_path():
    x = mx.array(inputs(5)[:1000])
    gate, up = x, x[::-1]
    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    try:
        assert mx.array_equal(gelu_tanh(x), gelu_tanh_fused(x), equal_nan=True)
        assert mx.array_equal(quick_gelu(x), quick_gelu_fused(x), equal_nan=True)
        assert mx.array_equal(silu_gate(gate, up), silu_gate_fused(gate, up), equal_nan=True)
    finally:
        mx.set_default_device(device)


def _sdpa_inputs(seed, batch, heads, queries, keys, dims, scale):
    rng = np.random.default_rng(seed)
    q, k, v = (mx.array((rng.standard_normal((batch, heads, n, dims)) * scale).astype(np.float32))
               for n in (queries, keys, keys))
    return q, k, v


@pytest.mark.parametrize("spread", [1.0, 30.0, 1e3])
@pytest.mark.parametrize("mask_kind", [None, "causal", "bool", "additive"])
def test_cpu_attention_is_fast_sdpa(spread, mask_kind):
    queries, keys = (5, 12) if mask_kind != "causal" else (12, 12)
    q, k, v = _sdpa_inputs(int(spread), 2, 3, queries, keys, 16, spread)
    rng = np.random.default_rng(7)
    mask = {None: None, "causal": "causal",
            "bool": mx.array(np.arange(keys)[None] <= np.arange(keys - queries, keys)[:, None]),
            "additive": mx.array(rng.standard_normal((queries, keys)).astype(np.float32))}[mask_kind]
    with mx.stream(mx.cpu):
        fast = attention_cpu(q, k, v, 0.25, mask)
        plain = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
        assert not np.isnan(np.array(fast)).any()
        np.testing.assert_allclose(np.array(fast), np.array(plain), rtol=1e-5,
                                   atol=1e-5 * spread)


def test_fused_softmax_extremes():
    rows = np.array([[0.0, 0.0, 0.0], [1e4, -1e4, 0.0], [-np.inf, 0.0, 1.0], [3e38, 3e38, -3e38],
                     [-1e30, -1e30, -1e30], [np.nan, 0.0, 1.0]], dtype=np.float32)
    x = mx.array(rows)
    with mx.stream(mx.cpu):
        assert_same_function(np.array(softmax_fused(x)), np.array(mx.softmax(x, axis=-1)))
