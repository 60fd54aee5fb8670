"""DC-AE (diffusers `AutoencoderDC`), the 32x autoencoder of Sana: continuous latents ->
images in [-1, 1], NHWC. Decode only: Sana samples latents and never encodes an image, so the
encoder's keys are dropped on conversion.

The decoder runs from the deepest stage up: a 3x3 conv from the latents (plus the latents
repeated across its channels), then per stage an up-sampling block and residual layers --
ResBlocks in the shallow stages, EfficientViT blocks (efficientvit.py) in the deep ones --
then RMSNorm, ReLU and a 3x3 conv to pixels. Names mirror diffusers' for a one-to-one key map.
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_imgen.configs import DictConfig
from mlx_imgen.nn import BandedConv2d, RMSNorm
from mlx_imgen.weights.keymap import (Rule, concatenate_rows, conv_weight, map_keys,
                                      pointwise_conv_as_linear, shape_of)

from .efficientvit import NORM_EPS, EfficientViTBlock, efficientvit_flops
from .layers import conv_flops, decode_in_batches, nearest_2x

RES_BLOCK, VIT_BLOCK = "ResBlock", "EfficientViTBlock"


@dataclass
class DCAEConfig(DictConfig):
    """diffusers' AutoencoderDC config.json names, decoder side; defaults: Sana's f32c32 DC-AE
    (mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers, as diffusers' convert_dcae_to_diffusers.py
    builds it). Per-stage tuples run from the shallowest (full resolution) stage down."""
    in_channels: int = 3  # the image's channels, which the decoder outputs
    latent_channels: int = 32
    attention_head_dim: int = 32
    decoder_block_types: tuple[str, ...] = (RES_BLOCK,) * 3 + (VIT_BLOCK,) * 3
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    decoder_layers_per_block: tuple[int, ...] = (3, 3, 3, 3, 3, 3)
    decoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (), (5,), (5,), (5,))
    scaling_factor: float = 0.41407  # latents the samplers see are z * scaling_factor

    def __post_init__(self):
        # JSON gives lists: nested tuples, so a config read back equals the one written
        self.decoder_qkv_multiscales = tuple(tuple(s) for s in self.decoder_qkv_multiscales)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.decoder_block_out_channels) - 1)


class ResBlock(nn.Module):
    """3x3 conv, SiLU, 3x3 conv (no bias), channel RMSNorm, plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = BandedConv2d(channels, channels, 3)
        self.conv2 = BandedConv2d(channels, channels, 3, bias=False)
        self.norm = RMSNorm(channels, eps=NORM_EPS, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.norm(self.conv2(nn.silu(self.conv1(x))))


class UpBlock(nn.Module):
    """Nearest x2 and a 3x3 conv to the shallower stage's width, plus a parameter-free path:
    each input channel repeated, and each group of 4 channels spread over a 2 x 2 patch (the
    pixel shuffle), which gives the same width at twice the size."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = BandedConv2d(cin, cout, 3)
        self.repeats = 4 * cout // cin

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, _ = x.shape
        shortcut = mx.repeat(x, self.repeats, axis=-1).reshape(b, h, w, -1, 2, 2)
        shortcut = shortcut.transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, -1)
        return self.conv(nearest_2x(x)) + shortcut


class Decoder(nn.Module):
    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        widths = cfg.decoder_block_out_channels
        self.conv_in = BandedConv2d(cfg.latent_channels, widths[-1], 3)
        self.in_repeats = widths[-1] // cfg.latent_channels
        self.up_blocks = []  # indexed by stage, shallowest first, as diffusers' up_blocks
        for i, (width, layers) in enumerate(zip(widths, cfg.decoder_layers_per_block)):
            stage = [UpBlock(widths[i + 1], width)] if i < len(widths) - 1 else []
            for _ in range(layers):
                stage.append(ResBlock(width) if cfg.decoder_block_types[i] == RES_BLOCK else
                             EfficientViTBlock(width, cfg.attention_head_dim,
                                               cfg.decoder_qkv_multiscales[i]))
            self.up_blocks.append(stage)
        self.norm_out = RMSNorm(widths[0], eps=NORM_EPS, bias=True)
        self.conv_out = BandedConv2d(widths[0], cfg.in_channels, 3)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.conv_in(z) + mx.repeat(z, self.in_repeats, axis=-1)
        for stage in reversed(self.up_blocks):
            for layer in stage:
                x = layer(x)
        return self.conv_out(nn.relu(self.norm_out(x)))


class DCAE(nn.Module):
    def __init__(self, config: DCAEConfig):
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)

    @property
    def dtype(self) -> mx.Dtype:
        return self.decoder.conv_in.weight.dtype

    def decode(self, z: mx.array) -> mx.array:
        """(B, h, w, latent_channels) unscaled latents -> (B, 32h, 32w, 3) images, nominally in
        [-1, 1], unclamped."""
        return self.decoder(z)

    def decode_latents(self, latents: mx.array, batch_size: int | None = None) -> mx.array:
        """Scaled latents (what a sampler returns) -> images, `batch_size` images at a time;
        as diffusers' SanaPipeline, latents are divided by the scaling factor first."""
        z = latents.astype(mx.float32) / self.config.scaling_factor
        return decode_in_batches(self.decode, z, batch_size, check=self._check_finite)

    def _check_finite(self, images: mx.array, z: mx.array) -> None:
        if mx.all(mx.isfinite(images)).item():
            return
        if not mx.all(mx.isfinite(z)).item():
            raise ValueError("the latents to decode hold NaN or infinite values, so the sampling "
                             "diverged; sample again in float32 or with a lower guidance")
        raise ValueError(f"the DC-AE decoded non-finite values from finite latents in "
                         f"{self.dtype}, so its weights are not a working DC-AE's; convert the "
                         "model again from the hub repo's files, in float32")


# ---------------------------------------------------------------- diffusers checkpoint keys

_D = r"(decoder\.(?:.+\.)?)"
_CONVS = r"(?:conv_in|conv_out|conv|conv1|conv2|proj_in|proj_out|conv_depth)"
DC_AE_KEY_RULES: list[Rule] = [
    Rule(tuple(rf"{_D}attn\.to_{p}\.weight" for p in "qkv"), r"\1attn.qkv.weight",
         concatenate_rows),
    Rule(rf"{_D}conv_out\.conv_inverted\.weight", r"\1conv_out.ffn.expand.weight",
         pointwise_conv_as_linear),
    Rule(rf"{_D}conv_out\.conv_inverted\.bias", r"\1conv_out.ffn.expand.bias"),
    Rule(rf"{_D}conv_out\.conv_depth\.(weight|bias)", r"\1conv_out.ffn.depthwise.\2",
         conv_weight),
    Rule(rf"{_D}conv_out\.conv_point\.weight", r"\1conv_out.ffn.project.weight",
         pointwise_conv_as_linear),
    Rule(rf"({_D}{_CONVS}\.weight)", r"\1", conv_weight),
    Rule(r"(decoder\..+\.(?:weight|bias))", r"\1"),
]
# config key -> (the value this port runs, diffusers' default where the key is absent, what)
SUPPORTED = {
    "upsample_block_type": ("interpolate", "pixel_shuffle", "up-sampling"),
    "decoder_norm_types": ("rms_norm", "rms_norm", "norm"),
    "decoder_act_fns": ("silu", "silu", "activation"),
    "decoder_conv_act_fn": ("relu", "relu", "output activation"),
    "decoder_in_shortcut": (True, True, "input shortcut"),
}


def _per_stage(value, stages: int) -> tuple:
    return (value,) * stages if isinstance(value, (str, bool)) else tuple(value)


def infer_dc_ae_config(state: dict, config: dict | None = None) -> DCAEConfig:
    """The DCAEConfig of a diffusers AutoencoderDC from its config.json (vae/config.json; the
    encoder's fields are ignored), refused in one sentence where this port does not run it or
    where it does not fit the weights' shapes."""
    if config is None:
        raise ValueError("a DC-AE converts from a diffusers folder: its config.json must come "
                         "with the weights (pass the folder, not the weights file)")
    if "decoder.conv_in.weight" not in state:
        found = ", ".join(sorted(state)[:4])
        raise ValueError(f"not a diffusers AutoencoderDC checkpoint: expected the key "
                         f"decoder.conv_in.weight, found {found}")
    d = DCAEConfig()
    widths = tuple(config.get("decoder_block_out_channels",
                              config.get("block_out_channels", d.decoder_block_out_channels)))
    stages = len(widths)
    for key, (supported, default, what) in SUPPORTED.items():
        value = config.get(key, default)
        if any(v != supported for v in _per_stage(value, stages)):
            raise ValueError(f"the DC-AE's {what} ({key}) is {value}; only {supported} "
                             "(Sana's DC-AE) is supported")
    cfg = DCAEConfig(
        in_channels=config.get("in_channels", d.in_channels),
        latent_channels=config.get("latent_channels", d.latent_channels),
        attention_head_dim=config.get("attention_head_dim", d.attention_head_dim),
        decoder_block_types=_per_stage(config.get("decoder_block_types", RES_BLOCK), stages),
        decoder_block_out_channels=widths,
        decoder_layers_per_block=tuple(config.get("decoder_layers_per_block",
                                                  d.decoder_layers_per_block)),
        decoder_qkv_multiscales=tuple(config.get("decoder_qkv_multiscales",
                                                 d.decoder_qkv_multiscales)),
        scaling_factor=float(config.get("scaling_factor", 1.0)))  # diffusers' default
    _check_structure(cfg)
    _check_shapes(cfg, state)
    return cfg


def _check_structure(cfg: DCAEConfig) -> None:
    stages = len(cfg.decoder_block_out_channels)
    for key in ("decoder_block_types", "decoder_layers_per_block", "decoder_qkv_multiscales"):
        if len(getattr(cfg, key)) != stages:
            raise ValueError(f"the DC-AE's {key} has {len(getattr(cfg, key))} entries for "
                             f"{stages} stages; pass the config.json of these weights")
    if any(t not in (RES_BLOCK, VIT_BLOCK) for t in cfg.decoder_block_types):
        raise ValueError(f"the DC-AE's decoder_block_types are {cfg.decoder_block_types}; only "
                         f"{RES_BLOCK} and {VIT_BLOCK} are supported")
    if min(cfg.decoder_layers_per_block) < 1:
        raise ValueError("the DC-AE has a decoder stage without layers (decoder_layers_per_block "
                         f"{cfg.decoder_layers_per_block}); only Sana's layout, each stage with "
                         "layers, is supported")
    widths = cfg.decoder_block_out_channels
    if widths[-1] % cfg.latent_channels or any(4 * widths[i] % widths[i + 1]
                                               for i in range(stages - 1)):
        raise ValueError(f"the DC-AE's widths {widths} do not repeat evenly from "
                         f"{cfg.latent_channels} latent channels and across its up-sampling "
                         "stages; pass the config.json of these weights")


def _check_shapes(cfg: DCAEConfig, state: dict) -> None:
    from mlx.utils import tree_flatten

    expected = {k: tuple(v.shape) for k, v in tree_flatten(DCAE(cfg).parameters())}
    found = {k: tuple(shape_of(v)) for k, v in dc_ae_weights_from_upstream(state,
                                                                            lazy=True).items()}
    wrong = sorted(k for k in expected.keys() | found.keys()
                   if expected.get(k) != found.get(k))
    if wrong:
        key = wrong[0]
        more = f" (and {len(wrong) - 1} more disagreements)" if len(wrong) > 1 else ""
        raise ValueError(f"the DC-AE's config.json does not fit its weights: {key} is "
                         f"{found.get(key, 'absent')} in the weights but "
                         f"{expected.get(key, 'absent')} by the config{more}; pass the "
                         "config.json that came with these weights")


def dc_ae_weights_from_upstream(state: dict, lazy: bool = False) -> dict[str, mx.array]:
    decoding = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return map_keys(decoding, DC_AE_KEY_RULES, lazy=lazy)


# ---------------------------------------------------------------- FLOPs (2 x MACs)

def decode_flops(config: DCAEConfig, h: int, w: int) -> float:
    """One image's decode from an h x w latent grid: convolutions, linears and the linear
    attention's matmuls (norms, activations and resampling are not counted)."""
    widths = config.decoder_block_out_channels
    total = conv_flops(h, w, config.latent_channels, widths[-1], 3)
    for i in reversed(range(len(widths))):
        c = widths[i]
        if i < len(widths) - 1:
            h, w = 2 * h, 2 * w
            total += conv_flops(h, w, widths[i + 1], c, 3)
        if config.decoder_block_types[i] == RES_BLOCK:
            layer = 2 * conv_flops(h, w, c, c, 3)
        else:
            layer = efficientvit_flops(h, w, c, config.attention_head_dim,
                                       config.decoder_qkv_multiscales[i])
        total += config.decoder_layers_per_block[i] * layer
    return total + conv_flops(h, w, widths[0], config.in_channels, 3)
