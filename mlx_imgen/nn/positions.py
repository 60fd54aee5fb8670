"""Position encodings: 2-D RoPE tables over a square token grid, 1-D RoPE over a sequence
(Llama's), fixed 2-D sin-cos, learned."""

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np


def rope_2d_table(grid_size: int, head_dim: int, base: float = 10000.0,
                  prefix_tokens: int = 0, prefix: str = "zeros") -> tuple[mx.array, mx.array]:
    """Cos and sin tables of shape (prefix_tokens + grid_size**2, head_dim // 2).

    The first half of each head's rotation pairs turns with the row index, the second half with
    the column index. `prefix="zeros"` reproduces LlamaGen, whose table holds zeros (not the
    identity rotation) at class-token positions, so q and k vanish there.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim // 2, 2)[:quarter] / (head_dim // 2)))
    angles_1d = np.outer(np.arange(grid_size), inv_freq)  # (grid, quarter)
    rows = np.broadcast_to(angles_1d[:, None, :], (grid_size, grid_size, quarter))
    cols = np.broadcast_to(angles_1d[None, :, :], (grid_size, grid_size, quarter))
    angles = np.concatenate([rows, cols], axis=-1).reshape(grid_size * grid_size, 2 * quarter)
    cos, sin = np.cos(angles), np.sin(angles)
    if prefix_tokens:
        if prefix not in ("zeros", "identity"):
            raise ValueError(f"unknown RoPE prefix treatment {prefix!r}; use 'zeros' or 'identity'")
        fill_cos = np.zeros if prefix == "zeros" else np.ones
        cos = np.concatenate([fill_cos((prefix_tokens, 2 * quarter)), cos])
        sin = np.concatenate([np.zeros((prefix_tokens, 2 * quarter)), sin])
    return mx.array(cos.astype(np.float32)), mx.array(sin.astype(np.float32))


def apply_rope(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, H, L, D) by tables of shape (L, D/2)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = mx.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


@dataclass(frozen=True)
class Rope1D:
    """1-D RoPE at absolute positions offset, offset + 1, ... in Llama's (and transformers')
    rotate-half layout: channel i turns with channel i + D/2 at frequency base ** (-2i / D).
    LlamaGen's 2-D tables pair interleaved channels instead, hence a separate form."""
    dims: int
    base: float = 10000.0
    offset: int = 0

    def __call__(self, x: mx.array) -> mx.array:
        """Rotate x (B, H, L, D), position offset + l at index l."""
        return mx.fast.rope(x, self.dims, traditional=False, base=self.base, scale=1.0,
                            offset=self.offset)


def sincos_2d(dims: int, grid_size: int) -> mx.array:
    """Fixed 2-D sin-cos embedding (grid_size**2, dims) as in MAE and DiT.

    The first half of the channels encodes the column coordinate, the second half the row.
    """
    if dims % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dims}")
    omega = 1.0 / 10000 ** (np.arange(dims // 4, dtype=np.float64) / (dims / 4.0))
    coords = np.arange(grid_size, dtype=np.float64)
    col, row = np.meshgrid(coords, coords)  # col varies along the last axis

    def encode(positions):
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(col), encode(row)], axis=1)
    return mx.array(table.astype(np.float32))


class LearnedPositions(nn.Module):
    """A learned table of `length` position vectors."""

    def __init__(self, length: int, dims: int):
        super().__init__()
        self.weight = mx.random.normal((length, dims)) * 0.02

    def __call__(self, offset: int, length: int) -> mx.array:
        return self.weight[offset:offset + length]


def timestep_frequencies(t: mx.array, dims: int, max_period: float = 10000.0,
                         shift: float = 0.0) -> mx.array:
    """Sinusoidal features [cos, sin] of (possibly fractional) timesteps, shape (B, dims).

    Frequency k is max_period ** (-k / (half - shift)): shift 0 is GLIDE's and DiT's, shift 1
    is diffusers' `downscale_freq_shift=1`, which its DiT port uses with DiT's weights.
    """
    half = dims // 2
    freqs = mx.exp(-math.log(max_period) * mx.arange(half, dtype=mx.float32) / (half - shift))
    args = t.astype(mx.float32)[:, None] * freqs[None]
    emb = mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)
    if dims % 2:
        emb = mx.concatenate([emb, mx.zeros_like(emb[:, :1])], axis=-1)
    return emb
