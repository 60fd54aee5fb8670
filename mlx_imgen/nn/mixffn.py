"""Sana's Mix-FFN (GLUMBConv): a gated feed-forward with a 3x3 depthwise conv between its two
pointwise layers, so each token also sees its grid neighbours (Sana has no position embedding)."""

import mlx.core as mx
import mlx.nn as nn

from .depthwise import DepthwiseConv2d


class MixFFN(nn.Module):
    """Pointwise expand to 2 x `hidden`, SiLU, 3x3 depthwise conv over the token grid, split
    into value and gate (value first), value * SiLU(gate), pointwise project (no bias).

    The pointwise convs are Linear layers over the token sequence (the same maps, without a
    conv; upstream 1x1 conv weights load through keymap.pointwise_conv_as_linear); only the
    depthwise conv needs the grid, NHWC. Sana sizes `hidden` as int(mlp_ratio * dims).
    """

    def __init__(self, dims: int, hidden: int, out_dims: int | None = None):
        super().__init__()
        self.expand = nn.Linear(dims, 2 * hidden)
        self.depthwise = DepthwiseConv2d(2 * hidden, 3)
        self.project = nn.Linear(hidden, out_dims or dims, bias=False)

    def __call__(self, x: mx.array, height: int, width: int) -> mx.array:
        """`x` (B, height * width, dims), tokens in row-major grid order -> (B, N, out_dims)."""
        batch, length, _ = x.shape
        if length != height * width:
            raise ValueError(f"MixFFN got {length} tokens for a {height} x {width} grid; "
                             "pass the grid the tokens were patchified from")
        h = nn.silu(self.expand(x)).reshape(batch, height, width, -1)
        value, gate = mx.split(self.depthwise(h).reshape(batch, length, -1), 2, axis=-1)
        return self.project(value * nn.silu(gate))
