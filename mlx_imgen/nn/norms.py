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


def make_norm(kind: str, dims: int, eps: float, affine: bool = True, bias: bool = False, *,
              layer_bias: bool = True) -> nn.Module:
    """`bias` adds a bias to an RMSNorm; an affine LayerNorm has one unless `layer_bias` is
    False (aMUSEd's MLP norm has a weight only)."""
    if kind == "layer":
        return nn.LayerNorm(dims, eps=eps, affine=affine, bias=affine and layer_bias)
    if kind == "rms":
        return RMSNorm(dims, eps=eps, affine=affine, bias=bias)
    raise ValueError(f"unknown norm {kind!r}; use 'layer' or 'rms'")
