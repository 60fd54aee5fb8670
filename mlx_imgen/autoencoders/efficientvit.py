"""The EfficientViT block of DC-AE's deep stages, NHWC: multi-scale ReLU linear attention, then
a gated depthwise-conv feed-forward, each followed by a channel RMSNorm and added back.

Module and parameter names mirror diffusers' (autoencoder_dc.py), so its keys map one to one
(see dc_ae.DC_AE_KEY_RULES); q, k and v are one fused `qkv` projection.
"""

import mlx.core as mx
import mlx.nn as nn

from mlx_imgen.nn import DepthwiseConv2d, MixFFN, RMSNorm, relu_linear_attention

NORM_EPS = 1e-5  # DC-AE's RMSNorms (diffusers' get_normalization default)
ATTENTION_EPS = 1e-15  # the linear attention's normaliser guard, as in DC-AE


class ScaleAggregation(nn.Module):
    """One extra scale of q, k, v: a k x k depthwise conv over all of their channels, then a
    1x1 conv within each group of head_dim channels (no biases).

    The grouped 1x1 conv keeps its conv weight (O, 1, 1, I / groups) but runs as one batched
    matmul over the groups: MLX's grouped conv took 16x as long on CPU (32 ms against 2 ms at
    16 x 16 x 1536)."""

    def __init__(self, channels: int, groups: int, kernel: int):
        super().__init__()
        self.groups = groups
        self.proj_in = DepthwiseConv2d(channels, kernel, bias=False)
        self.proj_out = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.proj_in(x)
        shape = x.shape
        size = shape[-1] // self.groups
        weight = self.proj_out.weight.reshape(self.groups, size, size).swapaxes(1, 2)
        x = x.reshape(-1, self.groups, 1, size) @ weight  # (pixels, groups, 1, size)
        return x.reshape(shape)


class MultiscaleLinearAttention(nn.Module):
    """ReLU linear attention over every pixel, on the q, k, v of the 1x1 projection and on
    each aggregated scale of them (each scale adds as many heads again), projected back,
    RMS-normalised, plus a residual.

    Upstream's heads interleave their q, k and v: the fused projection's channels, read in
    groups of 3 x head_dim, are one head's [q | k | v] each (the original EfficientViT had
    one qkv conv; diffusers' to_q, to_k, to_v are its three row blocks).

    diffusers switches to the quadratic form of the same sum for grids of at most head_dim
    pixels; both are phi(q) (phi(K)^T V) / (phi(q) . sum phi(k) + eps), so this computes the
    linear form throughout.
    """

    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...]):
        super().__init__()
        heads = channels // head_dim
        inner = heads * head_dim
        self.head_dim = head_dim
        self.qkv = nn.Linear(channels, 3 * inner, bias=False)
        self.to_qkv_multiscale = [ScaleAggregation(3 * inner, 3 * heads, k) for k in scales]
        self.to_out = nn.Linear(inner * (1 + len(scales)), channels, bias=False)
        self.norm_out = RMSNorm(channels, eps=NORM_EPS, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, _ = x.shape
        qkv = self.qkv(x)
        scales = mx.concatenate([qkv, *(scale(qkv) for scale in self.to_qkv_multiscale)], -1)
        # (B, heads, N, 3, head_dim): each head's channels are its q, k and v in turn
        heads = scales.reshape(b, h * w, -1, 3, self.head_dim).transpose(0, 2, 1, 3, 4)
        out = relu_linear_attention(heads[..., 0, :], heads[..., 1, :], heads[..., 2, :],
                                    eps=ATTENTION_EPS)
        out = out.transpose(0, 2, 1, 3).reshape(b, h, w, -1)
        return x + self.norm_out(self.to_out(out))


class GatedConvFFN(nn.Module):
    """diffusers' GLUMBConv as DC-AE uses it: nn's MixFFN (expand x4 to value and gate, 3x3
    depthwise, value * SiLU(gate), project), then an RMSNorm with bias, plus a residual."""

    def __init__(self, channels: int, expand: int = 4):
        super().__init__()
        self.ffn = MixFFN(channels, expand * channels)
        self.norm = RMSNorm(channels, eps=NORM_EPS, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, c = x.shape
        out = self.ffn(x.reshape(b, h * w, c), h, w).reshape(b, h, w, c)
        return x + self.norm(out)


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, scales: tuple[int, ...]):
        super().__init__()
        self.attn = MultiscaleLinearAttention(channels, head_dim, scales)
        self.conv_out = GatedConvFFN(channels)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv_out(self.attn(x))


# ---------------------------------------------------------------- FLOPs (2 x MACs)

def efficientvit_flops(h: int, w: int, channels: int, head_dim: int,
                       scales: tuple[int, ...]) -> float:
    """One block at h x w: projections, scale convs, the linear attention (K^T V and q times
    it, plus q . sum(k) for the normaliser) and the feed-forward's three convs."""
    n = h * w
    heads = channels // head_dim
    inner = heads * head_dim
    branches = 1 + len(scales)
    qkv = 2.0 * n * channels * 3 * inner
    aggregation = sum(2.0 * n * 3 * inner * (k * k + head_dim) for k in scales)
    attention = branches * heads * (4.0 * n * head_dim * head_dim + 2.0 * n * head_dim)
    out = 2.0 * n * branches * inner * channels
    hidden = 4 * channels
    ffn = 2.0 * n * (channels * 2 * hidden + 2 * hidden * 9 + hidden * channels)
    return qkv + aggregation + attention + out + ffn
