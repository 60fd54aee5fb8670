"""LlamaGen's VQ image tokenizer (VQ-16, VQ-8): images in [-1, 1], NHWC, to code grids and back.

Module names mirror upstream `tokenizer/tokenizer_image/vq_model.py`, so the key map is the identity
but for the attention blocks, which are nn's Attention (see ATTENTION_NAMES).
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_imgen.configs import DictConfig
from mlx_imgen.nn import BandedConv2d
from mlx_imgen.weights.keymap import Rule, conv_weight, map_keys, pointwise_conv_as_linear

from .layers import (Downsample, ResnetBlock, SpatialSelfAttention, UpstreamAttentionNames,
                     Upsample, attention_flops, attention_rules, conv_flops, group_norm,
                     resnet_flops)

_SHORTCUT = "nin_shortcut"  # upstream's name for the residual's 1x1 conv
# upstream's attention blocks hold 1x1 convs q, k, v, proj_out: ours are nn's Attention's Linears
ATTENTION_NAMES = {"q": "attention.q", "k": "attention.k", "v": "attention.v",
                   "proj_out": "attention.out"}


@dataclass
class VQConfig(DictConfig):
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # VQ-16; VQ-8 is (1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2
    in_channels: int = 3
    out_channels: int = 3
    norm_groups: int = 32
    norm_eps: float = 1e-6

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _l2_normalize(x: mx.array) -> mx.array:
    # F.normalize's floor on the norm, so a zero vector stays zero instead of NaN
    return x / mx.maximum(mx.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ConvBlock(nn.Module):
    """One resolution level: residual blocks, attention after each (lowest level only), resampling."""

    def __init__(self, cfg: VQConfig, cin: int, cout: int, depth: int, attention: bool,
                 resample: str | None):
        super().__init__()
        self.res = [ResnetBlock(cfg, cin if i == 0 else cout, cout, _SHORTCUT)
                    for i in range(depth)]
        self.attn = [SpatialSelfAttention(cfg, cout) for _ in range(depth)] if attention else []
        self.resample = resample  # "downsample", "upsample" or None: upstream's attribute name
        if resample == "downsample":
            self.downsample = Downsample(cout)
        elif resample == "upsample":
            self.upsample = Upsample(cout)

    def __call__(self, x: mx.array) -> mx.array:
        for i, res in enumerate(self.res):
            x = res(x)
            if self.attn:
                x = self.attn[i](x)
        return getattr(self, self.resample)(x) if self.resample else x


def _mid(cfg: VQConfig, channels: int) -> list[nn.Module]:
    return [ResnetBlock(cfg, channels, channels, _SHORTCUT), SpatialSelfAttention(cfg, channels),
            ResnetBlock(cfg, channels, channels, _SHORTCUT)]


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        last = len(widths) - 1
        self.conv_in = BandedConv2d(cfg.in_channels, cfg.ch, 3)
        self.conv_blocks = [
            ConvBlock(cfg, ([cfg.ch] + widths)[i], widths[i], cfg.num_res_blocks,
                      attention=i == last, resample=None if i == last else "downsample")
            for i in range(len(widths))]
        self.mid = _mid(cfg, widths[-1])
        self.norm_out = group_norm(cfg, widths[-1])
        self.conv_out = BandedConv2d(widths[-1], cfg.z_channels, 3)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for layer in self.conv_blocks + self.mid:
            x = layer(x)
        return self.conv_out(nn.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.ch * m for m in reversed(cfg.ch_mult)]  # lowest resolution first
        last = len(widths) - 1
        self.conv_in = BandedConv2d(cfg.z_channels, widths[0], 3)
        self.mid = _mid(cfg, widths[0])
        # the decoder has one residual block more per level than the encoder
        self.conv_blocks = [
            ConvBlock(cfg, widths[max(j - 1, 0)], widths[j], cfg.num_res_blocks + 1,
                      attention=j == 0, resample=None if j == last else "upsample")
            for j in range(len(widths))]
        self.norm_out = group_norm(cfg, widths[-1])
        self.conv_out = BandedConv2d(widths[-1], cfg.out_channels, 3)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.conv_in(z)
        for layer in self.mid + self.conv_blocks:
            x = layer(x)
        return self.conv_out(nn.silu(self.norm_out(x)))


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook; latents and codebook rows are both L2-normalised."""

    def __init__(self, size: int, dims: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dims)

    def codebook(self) -> mx.array:
        # stored rows are not unit length; upstream normalises at every use
        return _l2_normalize(self.embedding.weight)

    def lookup(self, codes: mx.array) -> mx.array:
        return self.codebook()[codes]

    def nearest(self, z: mx.array) -> mx.array:
        e = self.codebook()
        flat = _l2_normalize(z).reshape(-1, z.shape[-1])
        # upstream's expanded squared distance, kept term for term so near-ties round the same way
        dist = (flat * flat).sum(-1, keepdims=True) + (e * e).sum(-1) - 2 * (flat @ e.T)
        return mx.argmin(dist, axis=-1).astype(mx.int32).reshape(z.shape[:-1])


class VQModel(UpstreamAttentionNames, nn.Module):
    ATTENTION_NAMES = ATTENTION_NAMES
    POINTWISE_CONVS = True

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    def encode_with_latents(self, images: mx.array) -> tuple[mx.array, mx.array]:
        """(B, H, W, 3) images -> codes (B, h, w) int32 and their quantised latents (B, h, w, D)."""
        codes = self.quantize.nearest(self.quant_conv(self.encoder(images)))
        return codes, self.quantize.lookup(codes)

    def encode(self, images: mx.array) -> mx.array:
        return self.encode_with_latents(images)[0]

    def decode(self, latents: mx.array) -> mx.array:
        """(B, h, w, D) quantised latents -> (B, H, W, 3) images, nominally in [-1, 1], unclamped."""
        return self.decoder(self.post_quant_conv(latents))

    def decode_codes(self, codes: mx.array) -> mx.array:
        return self.decode(self.quantize.lookup(codes))


# ---------------------------------------------------------------- upstream checkpoint keys

_CONVS = r"(?:conv_in|conv_out|conv1|conv2|nin_shortcut|downsample\.conv|upsample\.conv)"
VQ_KEY_RULES: list[Rule] = [
    *attention_rules(ATTENTION_NAMES, pointwise_conv_as_linear),
    Rule(rf"((?:en|de)coder\.(?:.+\.)?{_CONVS}\.weight)", r"\1", conv_weight),
    Rule(r"((?:post_)?quant_conv\.weight)", r"\1", conv_weight),
    Rule(r"((?:en|de)coder\..+\.(?:weight|bias))", r"\1"),  # norms and conv biases
    Rule(r"((?:post_)?quant_conv\.bias)", r"\1"),
    Rule(r"(quantize\.embedding\.weight)", r"\1"),
]
# codebook_used is a rolling record of training assignments; nothing reads it at inference
VQ_IGNORE = [r"quantize\.codebook_used"]


def infer_vq_config(state: dict) -> VQConfig:
    """The VQConfig that upstream tensor shapes determine (any ch, ch_mult, codebook size)."""
    try:
        codebook_size, embed_dim = state["quantize.embedding.weight"].shape
        ch = state["encoder.conv_in.weight"].shape[0]
        z_channels = state["quant_conv.weight"].shape[1]
        levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.conv_blocks.")})
        ch_mult = tuple(state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // ch
                        for i in levels)
        res = {k.split(".")[4] for k in state if k.startswith("encoder.conv_blocks.0.res.")}
    except KeyError as err:
        raise ValueError(f"not a LlamaGen VQ checkpoint: it lacks {err.args[0]}; expected keys "
                         "like encoder.conv_in.weight and quantize.embedding.weight") from None
    return VQConfig(codebook_size=codebook_size, codebook_embed_dim=embed_dim, ch=ch,
                    ch_mult=ch_mult, z_channels=z_channels, num_res_blocks=len(res))


def vq_weights_from_upstream(state: dict, lazy: bool = False) -> dict[str, mx.array]:
    """Upstream VQModel state dict (the checkpoint's "model" entry) -> VQModel weights, or with
    `lazy` deferred ones that know their shapes."""
    return map_keys(state, VQ_KEY_RULES, VQ_IGNORE, lazy=lazy)


# ---------------------------------------------------------------- FLOPs (2 x MACs)

def _mid_flops(h: int, w: int, c: int) -> float:
    return 2 * resnet_flops(h, w, c, c) + attention_flops(h, w, c)


def decode_flops(config: VQConfig, h: int, w: int) -> float:
    """One image's decode from an h x w code grid: convolutions and attention matmuls."""
    widths = [config.ch * m for m in reversed(config.ch_mult)]
    total = conv_flops(h, w, config.codebook_embed_dim, config.z_channels)
    total += conv_flops(h, w, config.z_channels, widths[0], 3) + _mid_flops(h, w, widths[0])
    cin = widths[0]
    for j, cout in enumerate(widths):
        for _ in range(config.num_res_blocks + 1):
            total += resnet_flops(h, w, cin, cout) + (
                attention_flops(h, w, cout) if j == 0 else 0.0)
            cin = cout
        if j != len(widths) - 1:
            h, w = 2 * h, 2 * w
            total += conv_flops(h, w, cout, cout, 3)
    return total + conv_flops(h, w, cin, config.out_channels, 3)


def encode_flops(config: VQConfig, h: int, w: int) -> float:
    """One image's encode to an h x w code grid, including the nearest-code distance matmul."""
    widths = [config.ch * m for m in config.ch_mult]
    ih, iw = h * config.downsample, w * config.downsample
    total = conv_flops(ih, iw, config.in_channels, config.ch, 3)
    cin = config.ch
    for i, cout in enumerate(widths):
        for _ in range(config.num_res_blocks):
            total += resnet_flops(ih, iw, cin, cout) + (
                attention_flops(ih, iw, cout) if i == len(widths) - 1 else 0.0)
            cin = cout
        if i != len(widths) - 1:
            ih, iw = ih // 2, iw // 2
            total += conv_flops(ih, iw, cout, cout, 3)
    total += _mid_flops(ih, iw, cin) + conv_flops(ih, iw, cin, config.z_channels, 3)
    total += conv_flops(ih, iw, config.z_channels, config.codebook_embed_dim)
    return total + 2.0 * ih * iw * config.codebook_size * config.codebook_embed_dim
