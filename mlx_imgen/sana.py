"""Sana's transformer (diffusers' SanaTransformer2DModel): a flow-matching text-to-image model
whose layers are the shared backbone's Blocks with Sana's options (ReLU linear self-attention,
cross-attention to the caption without a norm before it, Mix-FFN, adaLN-single modulation).

Latents (DC-AE's 32 channels at 1/32 of the image) are cut into patches and projected; the
caption (Gemma-2's hidden states) is projected to the width and RMS-normed; the timestep's
sinusoid goes through a SiLU MLP, and one shared Linear turns it into every block's six
modulation vectors, to which each block adds its own learned table. Sana has no position
embedding (the Mix-FFN's depthwise conv sees the grid), so one model runs at any latent size.
Feature maps are NHWC.
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .backbone import BackboneConfig, Block, compute_dtype, modulate
from .configs import DictConfig
from .nn import RMSNorm, TimestepEmbedder
from .nn.activations import gelu_tanh

# upstream fixes these whatever the config says: the caption norm's and the final norm's eps
CAPTION_NORM_EPS = 1e-5
FINAL_NORM_EPS = 1e-6
# a padded caption position's additive score bias (diffusers' conversion of the 1/0 mask)
MASKED_SCORE = -10000.0


@dataclass
class SanaConfig(DictConfig):
    """diffusers' SanaTransformer2DModel config, under its names and with its defaults.
    `sample_size` is the latent side the model was trained at (image size / 32); the model runs
    at any latent size divisible by the patch size."""
    in_channels: int = 32
    out_channels: int | None = 32
    num_attention_heads: int = 70
    attention_head_dim: int = 32
    num_layers: int = 20
    num_cross_attention_heads: int | None = 20
    cross_attention_head_dim: int | None = 112
    cross_attention_dim: int | None = 2240
    caption_channels: int = 2304
    mlp_ratio: float = 2.5
    dropout: float = 0.0                 # training only
    attention_bias: bool = False         # self-attention's q, k, v biases
    sample_size: int = 32
    patch_size: int = 1
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    interpolation_scale: float | None = None
    guidance_embeds: bool = False
    guidance_embeds_scale: float = 0.1
    qk_norm: str | None = None
    timestep_scale: float = 1.0

    def __post_init__(self):
        for name in ("in_channels", "num_attention_heads", "attention_head_dim", "num_layers",
                     "caption_channels", "sample_size", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.interpolation_scale is not None:
            raise ValueError("this Sana model adds a sin-cos position embedding "
                             "(interpolation_scale, the 2K and 4K models), which mlx-imgen does "
                             "not support; use a 512 or 1024 px Sana")
        if self.guidance_embeds:
            raise ValueError("this Sana model embeds the guidance scale (Sana Sprint), which "
                             "mlx-imgen does not support; use a Sana 0.6B or 1.6B model")
        if self.qk_norm is not None:
            raise ValueError(f"this Sana model normalises queries and keys (qk_norm "
                             f"{self.qk_norm!r}, Sana 1.5 and Sprint), which mlx-imgen does not "
                             "support; use a Sana 0.6B or 1.6B model")
        if self.timestep_scale != 1.0:
            raise ValueError(f"this Sana model scales its timesteps by {self.timestep_scale} "
                             "(Sana Sprint), which mlx-imgen does not support; use a Sana 0.6B "
                             "or 1.6B model")
        if self.norm_elementwise_affine:
            raise ValueError("norm_elementwise_affine (an affine norm before the feed-forward) "
                             "is in no published Sana and not supported; set it false")
        if not (self.cross_attention_dim and self.num_cross_attention_heads
                and self.cross_attention_head_dim):
            raise ValueError("a Sana model without cross-attention cannot read a prompt; the "
                             "config needs cross_attention_dim, num_cross_attention_heads and "
                             "cross_attention_head_dim")
        if self.cross_attention_dim != self.width:
            raise ValueError(f"cross_attention_dim {self.cross_attention_dim} differs from the "
                             f"model width {self.width}, but the caption is projected to the "
                             "width before the blocks attend to it; fix the config")
        if self.hidden < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} leaves no feed-forward width")

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def hidden(self) -> int:
        """The Mix-FFN's hidden width (upstream's int(mlp_ratio * width))."""
        return int(self.mlp_ratio * self.width)

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def grid_size(self) -> int:
        """The token grid's side at the trained latent size."""
        return self.sample_size // self.patch_size

    @property
    def output_dims(self) -> int:
        """What the head predicts per token: a patch of velocity."""
        return self.patch_size ** 2 * self.output_channels

    @property
    def any_size(self) -> bool:
        """Sana has no position embedding, so one model samples latents of any size."""
        return True

    @property
    def num_tokens(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def input(self) -> str:
        return "patches"

    def backbone(self) -> BackboneConfig:
        """The blocks: non-affine LayerNorms, ReLU linear self-attention, cross-attention with
        its own heads and biased q, k, v and no norm, Mix-FFN, adaLN-single."""
        return BackboneConfig(
            depth=self.num_layers, width=self.width, heads=self.num_attention_heads,
            head_dim=self.attention_head_dim, mlp="mixffn", mlp_hidden=self.hidden,
            norm="layer", norm_eps=self.norm_eps, norm_affine=False, fused_qkv=True,
            qkv_bias=self.attention_bias, out_bias=True, attention_kernel="relu_linear",
            cross_heads=self.num_cross_attention_heads,
            cross_head_dim=self.cross_attention_head_dim, cross_qkv_bias=True, cross_norm=False,
            input="patches", grid_size=self.grid_size, in_channels=self.in_channels,
            patch_size=self.patch_size, out_channels=self.output_channels,
            conditioning="adaln", modulation="single", timestep=True,
            context_dim=self.width, positions="none")


class PatchProjection(nn.Conv2d):
    """A p x p stride-p convolution (nn.Conv2d's weights and keys) computed as one matmul over
    each patch's values: patches do not overlap, and at Sana's patch size 1 it is a pointwise
    Linear."""

    def __init__(self, in_channels: int, dims: int, patch_size: int):
        super().__init__(in_channels, dims, patch_size, stride=patch_size)

    def __call__(self, x: mx.array) -> mx.array:
        """(B, H, W, C) -> (B, H/p * W/p, dims), tokens in row-major grid order."""
        batch, height, width, channels = x.shape
        dims, p = self.weight.shape[0], self.weight.shape[1]
        patches = x.reshape(batch, height // p, p, width // p, p, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, p * p * channels)
        return patches @ self.weight.reshape(dims, -1).T + self.bias


class CaptionProjection(nn.Module):
    """Linear, tanh-approximated GELU, Linear: the text encoder's states to the model width."""

    def __init__(self, in_dims: int, dims: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dims, dims)
        self.linear_2 = nn.Linear(dims, dims)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(gelu_tanh(self.linear_1(x)))


def caption_bias(context_mask: mx.array, dtype: mx.Dtype) -> mx.array:
    """(B, L) 1/0 flags -> (B, 1, 1, L) additive score bias over the keys, as diffusers converts
    the mask (0 for a token, -10000 for padding): a row with no token then attends to all
    positions alike, as upstream does, rather than to none."""
    return ((1 - context_mask.astype(mx.float32)) * MASKED_SCORE).astype(dtype)[:, None, None]


class SanaTransformer(nn.Module):
    """`SanaTransformer(config)(x (B, H, W, in_channels), timesteps=(B,), context=(B, L,
    caption_channels), context_mask=(B, L))` -> the flow prediction (B, H, W, out_channels).

    H and W are any multiples of the patch size; timesteps are on diffusers' 0..1000 scale;
    context_mask flags the caption's tokens (1) and padding (0), default all tokens. `labels`
    is unused (no class condition) and `pooled` must be None (Sana reads no pooled text)."""

    def __init__(self, config: SanaConfig):
        super().__init__()
        self.config = cfg = config
        w = cfg.width
        self.patch_embed = PatchProjection(cfg.in_channels, w, cfg.patch_size)
        self.caption_projection = CaptionProjection(cfg.caption_channels, w)
        self.caption_norm = RMSNorm(w, CAPTION_NORM_EPS)
        self.time_embed = TimestepEmbedder(w, 256, freq_shift=0.0)
        self.time_modulation = nn.Linear(w, 6 * w)
        backbone = cfg.backbone()
        self.blocks = [Block(backbone) for _ in range(backbone.depth)]
        self.norm_out = nn.LayerNorm(w, eps=FINAL_NORM_EPS, affine=False)
        self.scale_shift_table = mx.zeros((2, w))
        self.proj_out = nn.Linear(w, cfg.patch_size ** 2 * cfg.output_channels)

    @property
    def dtype(self) -> mx.Dtype:
        return compute_dtype(self)

    def __call__(self, x: mx.array, labels=None, timesteps: mx.array | None = None, *,
                 context: mx.array, context_mask: mx.array | None = None,
                 pooled: mx.array | None = None) -> mx.array:
        cfg = self.config
        if pooled is not None:
            raise ValueError("Sana reads no pooled text embedding; pass pooled=None")
        if timesteps is None:
            raise ValueError("Sana needs the diffusion timesteps; pass timesteps=(B,)")
        batch, height, width, _ = x.shape
        p = cfg.patch_size
        if height % p or width % p:
            raise ValueError(f"the latents' {height} x {width} grid is not divisible by the "
                             f"patch size {p}; pass latents whose sides are multiples of {p}")
        dtype = self.dtype
        h = self.patch_embed(x.astype(dtype))
        timesteps = mx.broadcast_to(mx.array(timesteps).reshape(-1), (batch,))
        embedded = self.time_embed(timesteps).astype(dtype)
        cond = self.time_modulation(nn.silu(embedded))
        context = self.caption_norm(self.caption_projection(context.astype(dtype)))
        bias = None if context_mask is None else caption_bias(context_mask, dtype)
        grid = (height // p, width // p)
        for block in self.blocks:
            h = block(h, cond, context=context, context_mask=bias, grid=grid)
        shift, scale = mx.split(self.scale_shift_table + embedded[:, None], 2, axis=1)
        out = self.proj_out(modulate(self.norm_out(h), shift, scale))
        return self.unpatchify(out, *grid)

    def unpatchify(self, out: mx.array, rows: int, columns: int) -> mx.array:
        """(B, rows * columns, p * p * C) patch predictions -> (B, rows * p, columns * p, C)."""
        p = self.config.patch_size
        batch = out.shape[0]
        out = out.reshape(batch, rows, columns, p, p, -1).transpose(0, 1, 3, 2, 4, 5)
        return out.reshape(batch, rows * p, columns * p, -1)
