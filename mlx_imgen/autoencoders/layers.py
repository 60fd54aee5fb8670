"""Layers shared by the VQ and KL autoencoders (both descend from the same taming /
latent-diffusion blocks): residual blocks, spatial self-attention through nn's one Attention,
resampling, the renaming of upstream's attention weights, and their FLOPs."""

import re

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_imgen.weights.keymap import Rule
from mlx_imgen.nn import Attention, BandedConv2d, GroupNorm


def group_norm(cfg, channels: int) -> GroupNorm:
    """A GroupNorm with the `norm_groups` and `norm_eps` of a VQConfig or KLConfig."""
    return GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps)


class ResnetBlock(nn.Module):
    """Two GroupNorm-SiLU-3x3-conv layers and a residual, through a 1x1 conv where the width
    changes; that conv keeps upstream's name (`nin_shortcut` in the VQ, `conv_shortcut` in
    diffusers), so the weights load under it."""

    def __init__(self, cfg, cin: int, cout: int, shortcut: str):
        super().__init__()
        self.norm1 = group_norm(cfg, cin)
        self.conv1 = BandedConv2d(cin, cout, 3)
        self.norm2 = group_norm(cfg, cout)
        self.conv2 = BandedConv2d(cout, cout, 3)
        self.shortcut = shortcut if cin != cout else None
        if self.shortcut:
            setattr(self, shortcut, nn.Conv2d(cin, cout, 1))

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(nn.silu(self.norm1(x)))
        h = self.conv2(nn.silu(self.norm2(h)))
        return (getattr(self, self.shortcut)(x) if self.shortcut else x) + h


class SpatialSelfAttention(nn.Module):
    """GroupNorm, then one-head bidirectional attention over all H*W pixels, plus a residual.

    Upstream's 1x1-conv projections on NHWC are Linears over channels, so this is nn's
    Attention over the (B, H*W, C) sequence of pixels.
    """

    def __init__(self, cfg, channels: int):
        super().__init__()
        self.norm = group_norm(cfg, channels)
        self.attention = Attention(channels, 1, fused_qkv=False, qkv_bias=True, out_bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, c = x.shape
        out = self.attention(self.norm(x).reshape(b, h * w, c))
        return x + out.reshape(b, h, w, c)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def __call__(self, x: mx.array) -> mx.array:
        # upstream pads only right and bottom, so the stride-2 grid starts at the top-left pixel
        return self.conv(mx.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)]))


def nearest_2x(x: mx.array) -> mx.array:
    """(B, H, W, C) -> (B, 2H, 2W, C), each pixel repeated 2 x 2 (torch's nearest x2)."""
    b, h, w, c = x.shape
    return mx.broadcast_to(x[:, :, None, :, None], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = BandedConv2d(channels, channels, 3)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(nearest_2x(x))


# ---------------------------------------------------------------- upstream attention names

def attention_rules(names: dict[str, str], weight_transform=None) -> list[Rule]:
    """Key-map rules renaming upstream's attention-block entries by `names` (upstream's name
    within the block -> ours); `weight_transform` reshapes upstream's projection weights."""
    rules = []
    for upstream, ours in names.items():
        source = rf"((?:en|de)coder\..+)\.{re.escape(upstream)}\."
        rules += [Rule(source + "weight", rf"\1.{ours}.weight", weight_transform),
                  Rule(source + "bias", rf"\1.{ours}.bias")]
    return rules


def _renamed(weights: dict, names: dict[str, str], reshape) -> dict:
    patterns = [(re.compile(rf"(.+)\.{re.escape(old)}\.(weight|bias)\Z"), new)
                for old, new in names.items()]
    out = {}
    for key, value in weights.items():
        for pattern, new in patterns:
            match = pattern.match(key)
            if match:
                key, value = f"{match.group(1)}.{new}.{match.group(2)}", reshape(value)
                break
        out[key] = value
    return out


class UpstreamAttentionNames:
    """Mixin for an autoencoder whose attention blocks are SpatialSelfAttention while
    upstream's name them otherwise: `ATTENTION_NAMES` maps upstream's names within a block to
    ours, and `POINTWISE_CONVS` says upstream's projections are 1x1 convs.

    Weights under upstream's names (in MLX's layout) are what folders converted before the
    autoencoders shared nn's Attention hold, so `load_weights` accepts them too; and
    `upstream_layout` gives them back for the torch mirrors, which keep upstream's layout.
    """

    ATTENTION_NAMES: dict[str, str] = {}
    POINTWISE_CONVS = False

    def _as_linear(self, w: mx.array) -> mx.array:
        return w.reshape(w.shape[0], -1) if self.POINTWISE_CONVS and w.ndim == 4 else w

    def _as_pointwise_conv(self, w: mx.array) -> mx.array:
        return w.reshape(w.shape[0], 1, 1, -1) if self.POINTWISE_CONVS and w.ndim == 2 else w

    def upstream_layout(self) -> dict[str, mx.array]:
        """The parameters under upstream's names, 1x1 convs as (O, 1, 1, I)."""
        ours = {new: old for old, new in self.ATTENTION_NAMES.items()}
        return _renamed(dict(tree_flatten(self.parameters())), ours, self._as_pointwise_conv)

    def load_weights(self, file_or_weights, strict: bool = True):
        if not isinstance(file_or_weights, str):
            known = dict(tree_flatten(self.parameters()))
            weights = dict(file_or_weights)
            legacy = {k: v for k, v in weights.items() if k not in known}
            weights = {**{k: v for k, v in weights.items() if k in known},
                       **_renamed(legacy, self.ATTENTION_NAMES, self._as_linear)}
            file_or_weights = list(weights.items())
        return super().load_weights(file_or_weights, strict)


# ---------------------------------------------------------------- FLOPs (2 x MACs)

def conv_flops(h: int, w: int, cin: int, cout: int, k: int = 1) -> float:
    return 2.0 * h * w * cin * cout * k * k


def resnet_flops(h: int, w: int, cin: int, cout: int) -> float:
    shortcut = conv_flops(h, w, cin, cout) if cin != cout else 0.0
    return conv_flops(h, w, cin, cout, 3) + conv_flops(h, w, cout, cout, 3) + shortcut


def attention_flops(h: int, w: int, c: int) -> float:
    n = h * w
    return 4 * conv_flops(h, w, c, c) + 2 * (2.0 * n * n * c)  # q, k, v, out; QK^T and AV


def decode_in_batches(decode, z: mx.array, batch_size: int | None = None,
                      check=None) -> mx.array:
    """`decode` over unscaled latents `z`, `batch_size` images at a time, each part evaluated
    (and given to `check(images, z_part)`) before the next starts, so one part's activations
    are held at a time."""
    step = batch_size or z.shape[0]
    if step < 1:
        raise ValueError(f"the decode batch size must be at least 1, got {step}")
    parts = []
    for start in range(0, z.shape[0], step):
        parts.append(decode(z[start:start + step]))
        mx.eval(parts[-1])
        if check is not None:
            check(parts[-1], z[start:start + step])
    return parts[0] if len(parts) == 1 else mx.concatenate(parts)
