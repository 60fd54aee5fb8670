"""The Stable Diffusion KL-f8 VAE (diffusers `AutoencoderKL`): images in [-1, 1] <-> continuous
latents, NHWC. Module names mirror diffusers', so the key map is the identity up to the conv
layout and the attention block, which is nn's Attention (see ATTENTION_NAMES).
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_imgen.configs import DictConfig
from mlx_imgen.nn import BandedConv2d
from mlx_imgen.weights.keymap import Rule, conv_weight, map_keys

from .layers import (Downsample, ResnetBlock, SpatialSelfAttention, UpstreamAttentionNames,
                     Upsample, attention_flops, attention_rules, conv_flops, decode_in_batches,
                     group_norm, resnet_flops)

_SHORTCUT = "conv_shortcut"  # diffusers' name for the residual's 1x1 conv
# diffusers' attention-block names -> ours (nn's Attention under `attention`)
ATTENTION_NAMES = {"group_norm": "norm", "to_q": "attention.q", "to_k": "attention.k",
                   "to_v": "attention.v", "to_out.0": "attention.out"}
# old diffusers checkpoints (the sd-vae-ft-* files among them) name the projections
# query/key/value/proj_attn; diffusers renames them on load, and so does this map
LEGACY_ATTENTION_NAMES = {"query": "attention.q", "key": "attention.k", "value": "attention.v",
                          "proj_attn": "attention.out"}


@dataclass
class DecoderConfig(DictConfig):
    """What diffusers' Decoder (vae.py) reads; the KL VAE's and aMUSEd's VQ-GAN's share it."""
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    out_channels: int = 3
    norm_groups: int = 32
    norm_eps: float = 1e-6
    mid_attention: bool = True

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class KLConfig(DecoderConfig):
    in_channels: int = 3
    quant_conv: bool = True
    post_quant_conv: bool = True
    # latents the samplers see are (z - shift_factor) * scaling_factor
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0


class DownEncoderBlock2D(nn.Module):
    def __init__(self, cfg: KLConfig, cin: int, cout: int, downsample: bool):
        super().__init__()
        self.resnets = [ResnetBlock(cfg, cin if i == 0 else cout, cout, _SHORTCUT)
                        for i in range(cfg.layers_per_block)]
        if downsample:
            self.downsamplers = [Downsample(cout)]

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if "downsamplers" in self else x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cfg: DecoderConfig, cin: int, cout: int, upsample: bool):
        super().__init__()
        # the decoder has one residual block more per level than the encoder
        self.resnets = [ResnetBlock(cfg, cin if i == 0 else cout, cout, _SHORTCUT)
                        for i in range(cfg.layers_per_block + 1)]
        if upsample:
            self.upsamplers = [Upsample(cout)]

    def __call__(self, x: mx.array) -> mx.array:
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if "upsamplers" in self else x


class UNetMidBlock2D(nn.Module):
    def __init__(self, cfg: DecoderConfig, channels: int):
        super().__init__()
        self.resnets = [ResnetBlock(cfg, channels, channels, _SHORTCUT) for _ in range(2)]
        self.attentions = [SpatialSelfAttention(cfg, channels)] if cfg.mid_attention else []

    def __call__(self, x: mx.array) -> mx.array:
        x = self.resnets[0](x)
        if self.attentions:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(self, cfg: KLConfig):
        super().__init__()
        widths = cfg.block_out_channels
        self.conv_in = BandedConv2d(cfg.in_channels, widths[0], 3)
        self.down_blocks = [DownEncoderBlock2D(cfg, widths[max(i - 1, 0)], widths[i],
                                               downsample=i < len(widths) - 1)
                            for i in range(len(widths))]
        self.mid_block = UNetMidBlock2D(cfg, widths[-1])
        self.conv_norm_out = group_norm(cfg, widths[-1])
        # mean and log-variance
        self.conv_out = BandedConv2d(widths[-1], 2 * cfg.latent_channels, 3)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        widths = tuple(reversed(cfg.block_out_channels))  # lowest resolution first
        self.conv_in = BandedConv2d(cfg.latent_channels, widths[0], 3)
        self.mid_block = UNetMidBlock2D(cfg, widths[0])
        self.up_blocks = [UpDecoderBlock2D(cfg, widths[max(i - 1, 0)], widths[i],
                                           upsample=i < len(widths) - 1)
                          for i in range(len(widths))]
        self.conv_norm_out = group_norm(cfg, widths[-1])
        self.conv_out = BandedConv2d(widths[-1], cfg.out_channels, 3)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(UpstreamAttentionNames, nn.Module):
    ATTENTION_NAMES = ATTENTION_NAMES

    def __init__(self, config: KLConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        moments = 2 * config.latent_channels
        if config.quant_conv:
            self.quant_conv = nn.Conv2d(moments, moments, 1)
        if config.post_quant_conv:
            self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)

    def encode(self, images: mx.array) -> tuple[mx.array, mx.array]:
        """(B, H, W, 3) images in [-1, 1] -> the posterior's mean and log-variance (B, h, w, C)."""
        moments = self.encoder(images)
        if "quant_conv" in self:
            moments = self.quant_conv(moments)
        mean, logvar = mx.split(moments, 2, axis=-1)
        return mean, mx.clip(logvar, -30.0, 20.0)

    def decode(self, z: mx.array) -> mx.array:
        """(B, h, w, C) unscaled latents -> (B, H, W, 3) images, nominally in [-1, 1], unclamped."""
        if "post_quant_conv" in self:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def encode_latents(self, images: mx.array, key: mx.array | None = None) -> mx.array:
        """Images -> latents in the samplers' scaled space: the posterior's mean, or a sample
        from it when a random `key` is given."""
        mean, logvar = self.encode(images)
        z = mean if key is None else mean + mx.exp(0.5 * logvar) * mx.random.normal(
            mean.shape, dtype=mean.dtype, key=key)
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def decode_latents(self, latents: mx.array, batch_size: int | None = None) -> mx.array:
        """Scaled latents (what a sampler returns) -> images, `batch_size` images at a time."""
        z = latents.astype(mx.float32) / self.config.scaling_factor + self.config.shift_factor
        return decode_in_batches(self.decode, z, batch_size)


# ---------------------------------------------------------------- diffusers checkpoint keys

_CONVS = (r"(?:conv_in|conv_out|conv1|conv2|conv_shortcut|downsamplers\.0\.conv|"
          r"upsamplers\.0\.conv|quant_conv|post_quant_conv)")
KL_KEY_RULES: list[Rule] = [
    *attention_rules({**ATTENTION_NAMES, **LEGACY_ATTENTION_NAMES}),
    Rule(rf"((?:.+\.)?{_CONVS}\.weight)", r"\1", conv_weight),
    Rule(r"((?:en|de)coder\..+\.(?:weight|bias))", r"\1"),
    Rule(r"((?:post_)?quant_conv\.bias)", r"\1"),
]

BLOCK_TYPES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}


def infer_kl_config(state: dict, config: dict | None = None) -> KLConfig:
    """The KLConfig of a diffusers AutoencoderKL from its config.json; shapes are checked when
    the weights load. A config without `scaling_factor` gets diffusers' default, 0.18215, as
    diffusers itself loads it (the Stable Diffusion VAEs' config.json predates the field)."""
    if config is None:
        raise ValueError("a KL VAE converts from a diffusers folder: its config.json must come "
                         "with the weights (pass the folder, not the weights file)")
    for key, kind in BLOCK_TYPES.items():
        if any(t != kind for t in config.get(key, [kind])):
            raise ValueError(f"the VAE's {key} are {config[key]}; only {kind} blocks (the "
                             "Stable Diffusion VAE's) are supported")
    if config.get("act_fn", "silu") != "silu":
        raise ValueError(f"the VAE's activation is {config['act_fn']}; only silu is supported")
    if "encoder.conv_in.weight" not in state or "decoder.conv_in.weight" not in state:
        found = ", ".join(sorted(state)[:4])
        raise ValueError(f"not a diffusers AutoencoderKL checkpoint: expected keys "
                         f"encoder.conv_in.weight and decoder.conv_in.weight, found {found}")
    defaults = KLConfig()
    return KLConfig(
        block_out_channels=tuple(config.get("block_out_channels", defaults.block_out_channels)),
        layers_per_block=config.get("layers_per_block", defaults.layers_per_block),
        latent_channels=config.get("latent_channels", defaults.latent_channels),
        in_channels=config.get("in_channels", defaults.in_channels),
        out_channels=config.get("out_channels", defaults.out_channels),
        norm_groups=config.get("norm_num_groups", defaults.norm_groups),
        mid_attention=config.get("mid_block_add_attention", True),
        quant_conv=config.get("use_quant_conv", True),
        post_quant_conv=config.get("use_post_quant_conv", True),
        scaling_factor=float(config.get("scaling_factor", defaults.scaling_factor)),
        shift_factor=float(config.get("shift_factor") or 0.0))


def kl_weights_from_upstream(state: dict, lazy: bool = False) -> dict[str, mx.array]:
    return map_keys(state, KL_KEY_RULES, lazy=lazy)


# ---------------------------------------------------------------- FLOPs (2 x MACs)

def _mid(cfg: DecoderConfig, h: int, w: int, c: int) -> float:
    attention = attention_flops(h, w, c) if cfg.mid_attention else 0.0
    return 2 * resnet_flops(h, w, c, c) + attention


def decoder_flops(config: DecoderConfig, h: int, w: int) -> float:
    """diffusers' Decoder from an h x w latent: convolutions and attention matmuls."""
    widths = tuple(reversed(config.block_out_channels))
    total = conv_flops(h, w, config.latent_channels, widths[0], 3) + _mid(config, h, w, widths[0])
    cin = widths[0]
    for i, cout in enumerate(widths):
        for _ in range(config.layers_per_block + 1):
            total += resnet_flops(h, w, cin, cout)
            cin = cout
        if i < len(widths) - 1:
            h, w = 2 * h, 2 * w
            total += conv_flops(h, w, cout, cout, 3)
    return total + conv_flops(h, w, cin, config.out_channels, 3)


def decode_flops(config: KLConfig, h: int, w: int) -> float:
    """One image's decode from an h x w latent: convolutions and attention matmuls."""
    c = config.latent_channels
    return (conv_flops(h, w, c, c) if config.post_quant_conv else 0.0) + decoder_flops(config, h, w)
