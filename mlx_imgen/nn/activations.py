"""GELU-tanh and the SwiGLU gate as one fused kernel on MLX's CPU backend: the same functions.

On the CPU every MLX elementwise op is its own pass, and tanh is a scalar libm call per element
(GELU over (8, 256, 3072) took 167 ms). A compiled kernel runs the whole chain in one loop, and
with the flags `mlx_imgen.blas` gives MLX's runtime compiler it vectorises, exp included (MLX's
exp is a polynomial, its tanh is not). Metal and CUDA keep the plain formulas.
"""

import math

import mlx.core as mx
import mlx.nn as nn

# 0.5 x (1 + tanh u) == x sigmoid(2u) == x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
_TWICE_SQRT_2_OVER_PI = 2 * math.sqrt(2 / math.pi)


def on_cpu() -> bool:
    return mx.default_device().type == mx.cpu


@mx.compile
def gelu_tanh_fused(x: mx.array) -> mx.array:
    return x / (1 + mx.exp(-_TWICE_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


@mx.compile
def silu_gate_fused(gate: mx.array, up: mx.array) -> mx.array:
    return gate * mx.sigmoid(gate) * up


def gelu_tanh(x: mx.array) -> mx.array:
    """GELU with the tanh approximation (nn.gelu_approx)."""
    return gelu_tanh_fused(x) if on_cpu() else nn.gelu_approx(x)


def silu_gate(gate: mx.array, up: mx.array) -> mx.array:
    """SwiGLU's silu(gate) * up."""
    return silu_gate_fused(gate, up) if on_cpu() else nn.silu(gate) * up
