"""Normalisation layers: LayerNorm (with or without affine) and RMSNorm, chosen by name."""

import mlx.core as mx
import mlx.nn as nn


class RMSNorm(nn.Module):
    """RMSNorm with an optional learned scale and an optional bias (Halton-MaskGIT's final norm)."""

    def __init__(self, dims: int, eps: float = 1e-6, affine: bool = True, bias: bool = False):
        super().__init__()
        self.eps = eps
        if affine:
            self.weight = mx.ones((dims,))
        if bias:
            self.bias = mx.zeros((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        out = mx.fast.rms_norm(x, self.get("weight"), self.eps)
        return out + self.bias if "bias" in self else out


def _mean_in_two_levels(x: mx.array, axis: int) -> mx.array:
    """The mean over `axis` (kept), summed in blocks and then over the blocks' means."""
    n = x.shape[axis]
    block = 1
    while block * block < n and n % (2 * block) == 0:
        block *= 2
    if block == 1:
        return mx.mean(x, axis=axis, keepdims=True)
    axis = axis % x.ndim
    split = x.reshape(*x.shape[:axis], n // block, block, *x.shape[axis + 1:])
    return mx.mean(mx.mean(split, axis=axis + 1), axis=axis, keepdims=True)


class GroupNorm(nn.Module):
    """torch's GroupNorm on channels-last input: statistics over each group's channels and every
    position, then a per-channel scale and shift (the keys of mlx.nn.GroupNorm).

    The statistics are summed in two levels, and the variance is taken around the mean: MLX's
    CPU reductions add in one running float32 sum, which over the million values of a group of a
    512 px feature map (aMUSEd's VQ-GAN) lost three digits of the normalised output."""

    def __init__(self, groups: int, dims: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if dims % groups:
            raise ValueError(f"{groups} groups do not divide {dims} channels")
        self.groups, self.eps = groups, eps
        if affine:
            self.weight = mx.ones((dims,))
            self.bias = mx.zeros((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        batch, *rest, dims = x.shape
        grouped = x.reshape(batch, -1, self.groups, dims // self.groups)  # (B, P, G, c)
        mean = _mean_in_two_levels(mx.mean(grouped, axis=3, keepdims=True), axis=1)
        centred = grouped - mean
        var = _mean_in_two_levels(mx.mean(mx.square(centred), axis=3, keepdims=True), axis=1)
        out = (centred * mx.rsqrt(var + self.eps)).reshape(x.shape)
        return out * self.weight + self.bias if "weight" in self else out


def make_norm(kind: str, dims: int, eps: float, affine: bool = True, bias: bool = False, *,
              layer_bias: bool = True) -> nn.Module:
    """`bias` adds a bias to an RMSNorm; an affine LayerNorm has one unless `layer_bias` is
    False (aMUSEd's MLP norm has a weight only)."""
    if kind == "layer":
        return nn.LayerNorm(dims, eps=eps, affine=affine, bias=affine and layer_bias)
    if kind == "rms":
        return RMSNorm(dims, eps=eps, affine=affine, bias=bias)
    raise ValueError(f"unknown norm {kind!r}; use 'layer' or 'rms'")
