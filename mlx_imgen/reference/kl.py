"""PyTorch mirror of the MLX KL-VAE (`mlx_imgen.autoencoders.kl.AutoencoderKL`): the same
modules and parameter names (diffusers' layout), NCHW inside and NHWC at `latent_decoder` and
`latent_encoder`. The reference profiler decodes diffusion latents with it.
"""

from typing import Callable

from mlx_imgen.autoencoders.kl import KLConfig

from . import load_mlx_weights, require_torch, torch_dtype
from .vq import Downsample, Upsample  # the same resampling layers as MLX's autoencoders.layers

torch = require_torch()
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


def _group_norm(cfg: KLConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps)


class ResnetBlock2D(nn.Module):
    def __init__(self, cfg: KLConfig, cin: int, cout: int):
        super().__init__()
        self.norm1 = _group_norm(cfg, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _group_norm(cfg, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Attention(nn.Module):
    """Single-head self-attention over all pixels with a residual (the mid block's)."""

    def __init__(self, cfg: KLConfig, channels: int):
        super().__init__()
        self.group_norm = _group_norm(cfg, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.group_norm(x).flatten(2).transpose(1, 2)[:, None]  # (b, 1, h*w, c)
        out = F.scaled_dot_product_attention(self.to_q(y), self.to_k(y), self.to_v(y),
                                             scale=c ** -0.5)
        return x + self.to_out[0](out[:, 0]).transpose(1, 2).reshape(b, c, h, w)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, cfg: KLConfig, cin: int, cout: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(cfg, cin if i == 0 else cout, cout)
                                     for i in range(cfg.layers_per_block))
        self.downsamplers = nn.ModuleList([Downsample(cout)] if downsample else [])

    def forward(self, x):
        for layer in (*self.resnets, *self.downsamplers):
            x = layer(x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cfg: KLConfig, cin: int, cout: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(cfg, cin if i == 0 else cout, cout)
                                     for i in range(cfg.layers_per_block + 1))
        self.upsamplers = nn.ModuleList([Upsample(cout)] if upsample else [])

    def forward(self, x):
        for layer in (*self.resnets, *self.upsamplers):
            x = layer(x)
        return x


class UNetMidBlock2D(nn.Module):
    def __init__(self, cfg: KLConfig, channels: int):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(cfg, channels, channels) for _ in range(2))
        self.attentions = nn.ModuleList([Attention(cfg, channels)] if cfg.mid_attention else [])

    def forward(self, x):
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(self, cfg: KLConfig):
        super().__init__()
        widths = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(cfg, widths[max(i - 1, 0)], widths[i],
                               downsample=i < len(widths) - 1) for i in range(len(widths)))
        self.mid_block = UNetMidBlock2D(cfg, widths[-1])
        self.conv_norm_out = _group_norm(cfg, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: KLConfig):
        super().__init__()
        widths = tuple(reversed(cfg.block_out_channels))  # lowest resolution first
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(cfg, widths[0])
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(cfg, widths[max(i - 1, 0)], widths[i],
                             upsample=i < len(widths) - 1) for i in range(len(widths)))
        self.conv_norm_out = _group_norm(cfg, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: KLConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        moments, c = 2 * config.latent_channels, config.latent_channels
        self.quant_conv = nn.Conv2d(moments, moments, 1) if config.quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if config.post_quant_conv else None

    def encode(self, images):
        """(B, 3, H, W) images in [-1, 1] -> the posterior's mean and log-variance (B, C, h, w)."""
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        """(B, C, h, w) unscaled latents -> (B, 3, H, W) images, unclamped."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


# ---------------------------------------------------------------- from an MLX AutoencoderKL

def load_from_mlx(torch_model: AutoencoderKL, mlx_model) -> AutoencoderKL:
    """Copy an MLX AutoencoderKL's weights into the mirror, strictly (conv weights OHWI ->
    OIHW); the mirror takes the MLX model's dtype."""
    dtype = torch_dtype(mlx_model.decoder.conv_in.weight.dtype)
    torch_model.to(dtype)
    load_mlx_weights(torch_model, mlx_model)
    return torch_model


def from_mlx(mlx_model, device: str | None = None) -> AutoencoderKL:
    """A torch AutoencoderKL with an MLX AutoencoderKL's configuration and weights, in eval
    mode on `device`."""
    model = load_from_mlx(AutoencoderKL(mlx_model.config), mlx_model)
    return model.to(device or "cpu").eval()


def _dtype(model: nn.Module):
    return next(model.parameters()).dtype


def latent_decoder(model: AutoencoderKL, scaling_factor: float | None = None,
                   shift: float | None = None) -> Callable:
    """latents (B, h, w, C) in the samplers' scaled space -> images (B, H, W, 3), as MLX's
    `decode_latents`: z = latents / scaling_factor + shift, decoded. The factors default to the
    model's configuration."""
    scale = model.config.scaling_factor if scaling_factor is None else scaling_factor
    shift = model.config.shift_factor if shift is None else shift

    def decode(latents):
        z = latents.to(torch.float32) / scale + shift
        with torch.inference_mode():
            images = model.decode(z.permute(0, 3, 1, 2).to(_dtype(model)))
        return images.permute(0, 2, 3, 1)

    return decode


def latent_encoder(model: AutoencoderKL, scaling_factor: float | None = None,
                   shift: float | None = None) -> Callable:
    """images (B, H, W, 3) in [-1, 1] -> the posterior mean in the samplers' scaled space
    (B, h, w, C), as MLX's `encode_latents` without a key."""
    scale = model.config.scaling_factor if scaling_factor is None else scaling_factor
    shift = model.config.shift_factor if shift is None else shift

    def encode(images):
        with torch.inference_mode():
            mean, _ = model.encode(images.permute(0, 3, 1, 2).to(_dtype(model)))
        return ((mean - shift) * scale).permute(0, 2, 3, 1)

    return encode
