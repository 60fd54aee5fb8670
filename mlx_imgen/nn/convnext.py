"""ConvNeXt-v2 pieces on NHWC feature maps: GlobalResponseNorm and a conditioned ConvNeXt block
(aMUSEd's U-ViT res blocks)."""

import mlx.core as mx
import mlx.nn as nn

from .depthwise import DepthwiseConv2d
from .norms import RMSNorm


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-v2's GRN: each channel's L2 norm over the map, divided by the mean of those
    norms over channels, reweights the features; gamma and beta start at zero (identity)."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        # kept (1, 1, 1, C) as upstream stores them, which also broadcasts over NHWC
        self.gamma = mx.zeros((1, 1, 1, dims))
        self.beta = mx.zeros((1, 1, 1, dims))

    def __call__(self, x: mx.array) -> mx.array:
        spatial = mx.sqrt(mx.sum(mx.square(x.astype(mx.float32)), axis=(1, 2), keepdims=True))
        ratio = (spatial / (spatial.mean(axis=-1, keepdims=True) + self.eps)).astype(x.dtype)
        return self.gamma * (x * ratio) + self.beta + x


class ConvNeXtBlock(nn.Module):
    """Depthwise 3x3 conv, RMSNorm, Linear to `expansion` x, exact GELU, GRN, Linear back, the
    residual; then the block's output is scaled and shifted by a Linear of the condition."""

    def __init__(self, channels: int, cond_dims: int, *, eps: float = 1e-6, affine: bool = True,
                 bias: bool = True, expansion: int = 4):
        super().__init__()
        hidden = channels * expansion
        self.depthwise = DepthwiseConv2d(channels, 3, bias=bias)
        self.norm = RMSNorm(channels, eps, affine)
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.grn = GlobalResponseNorm(hidden)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)
        self.modulation = nn.Linear(cond_dims, 2 * channels, bias=bias)

    def __call__(self, x: mx.array, cond: mx.array) -> mx.array:
        """`x` (B, H, W, C); `cond` (B, cond_dims), already through its SiLU."""
        h = self.fc2(self.grn(nn.gelu(self.fc1(self.norm(self.depthwise(x))))))
        x = x + h
        scale, shift = mx.split(self.modulation(cond)[:, None, None], 2, axis=-1)
        return x * (1 + scale) + shift
