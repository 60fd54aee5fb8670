"""DiT and SiT class-to-image (diffusion): adaLN-Zero configurations of the backbone with learned
sigma, and the key maps of DiT's `models.py` checkpoints (SiT's share them) and of diffusers'
`DiTTransformer2DModel`. DiT samples with DDPM or DDIM on epsilon; SiT integrates a velocity
(their presets live in paradigms/presets.py).
"""

import dataclasses
import math

import mlx.core as mx
import numpy as np

from mlx_imgen.backbone import BackboneConfig
from mlx_imgen.nn import sincos_2d
from mlx_imgen.weights.keymap import (Copy, KeyMap, Rule, as_mlx, concatenate_rows, conv_weight,
                                      count_blocks)

from .base import LATENT_STRIDE, Family, Layout

# DiT_models in upstream models.py: depth, width, heads; each comes with patch 2, 4 or 8
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
VAE_DOWNSAMPLE = LATENT_STRIDE  # the Stable Diffusion VAE's, which every published DiT and SiT uses

ORIGINAL = KeyMap(
    rules=(
        Rule(r"x_embedder\.proj\.weight", "patch_embed.proj.weight", conv_weight),
        Rule(r"x_embedder\.proj\.bias", "patch_embed.proj.bias"),
        Rule(r"t_embedder\.mlp\.0\.(weight|bias)", r"time_embed.linear1.\1"),
        Rule(r"t_embedder\.mlp\.2\.(weight|bias)", r"time_embed.linear2.\1"),
        Rule(r"y_embedder\.embedding_table\.weight", "class_embed.weight"),
        Rule(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
        Rule(r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"blocks.\1.attn.out.\2"),
        Rule(r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
        Rule(r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"blocks.\1.modulation.\2"),
        Rule(r"final_layer\.adaLN_modulation\.1\.(weight|bias)", r"final_modulation.\1"),
        Rule(r"final_layer\.linear\.(weight|bias)", r"head.\1"),
    ),
    # the fixed sin-cos table is rebuilt at run time (checked against the file's in infer_config)
    ignore=(r"pos_embed",),
)
_BLOCK = r"transformer_blocks\.(\d+)\."
_EMBEDDER = r"transformer_blocks\.0\.norm1\.emb\."
DIFFUSERS = KeyMap(
    rules=(
        Rule(r"pos_embed\.proj\.weight", "patch_embed.proj.weight", conv_weight),
        Rule(r"pos_embed\.proj\.bias", "patch_embed.proj.bias"),
        Rule(_EMBEDDER + r"timestep_embedder\.linear_1\.(weight|bias)", r"time_embed.linear1.\1"),
        Rule(_EMBEDDER + r"timestep_embedder\.linear_2\.(weight|bias)", r"time_embed.linear2.\1"),
        Rule(_EMBEDDER + r"class_embedder\.embedding_table\.weight", "class_embed.weight"),
        Rule(_BLOCK + r"norm1\.linear\.(weight|bias)", r"blocks.\1.modulation.\2"),
        Rule(_BLOCK + r"attn1\.to_qkv\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
        # diffusers keeps q, k and v apart; the backbone's fused qkv stacks them in that order
        Rule(tuple(_BLOCK + rf"attn1\.to_{part}\.(weight|bias)" for part in "qkv"),
             r"blocks.\1.attn.qkv.\2", concatenate_rows),
        Rule(_BLOCK + r"attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.out.\2"),
        Rule(_BLOCK + r"ff\.net\.0\.proj\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
        Rule(_BLOCK + r"ff\.net\.2\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
        Rule(r"proj_out_1\.(weight|bias)", r"final_modulation.\1"),
        Rule(r"proj_out_2\.(weight|bias)", r"head.\1"),
    ),
    # diffusers' conversion script left the original's sin-cos table in its files
    ignore=(r"pos_embed",),
    # diffusers copies the embedders into every block; the backbone shares block 0's
    copies=(Copy(r"transformer_blocks\.([1-9]\d*)\.norm1\.emb\.(.+)",
                 r"transformer_blocks.0.norm1.emb.\2",
                 r"transformer block \1 has its own timestep and class embedder, unlike block "
                 "0's; the backbone shares one, so this model cannot be converted"),),
)
CLASS_TABLE = "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"


def backbone_config(depth: int, width: int, heads: int, *, hidden: int | None = None,
                    patch_size: int = 2, latent_size: int = 32, in_channels: int = 4,
                    out_channels: int = 8, num_classes: int = 1000, timestep_freq_shift: float = 0.0,
                    mlp_norm_eps: float | None = None) -> BackboneConfig:
    """DiT's block: non-affine LayerNorms (eps 1e-6), GELU-tanh MLP, fused qkv with biases,
    adaLN-Zero from class + timestep, fixed sin-cos positions, a linear head per patch."""
    if latent_size % patch_size:
        raise ValueError(f"the latent size {latent_size} is not a multiple of the patch size "
                         f"{patch_size}; choose an image size that is a multiple of "
                         f"{patch_size * VAE_DOWNSAMPLE} px")
    return BackboneConfig(
        depth=depth, width=width, heads=heads, mlp="gelu_tanh", mlp_hidden=hidden or 4 * width,
        norm="layer", norm_eps=1e-6, mlp_norm_eps=mlp_norm_eps, norm_affine=False,
        final_norm_affine=False, fused_qkv=True, qkv_bias=True, out_bias=True,
        input="patches", grid_size=latent_size // patch_size, in_channels=in_channels,
        patch_size=patch_size, out_channels=out_channels, conditioning="adaln",
        num_classes=num_classes, timestep=True, timestep_freq_shift=timestep_freq_shift,
        positions="sincos2d", head_bias=True)


def config_for(size: str, image_size: int) -> BackboneConfig:
    """A published size ("XL/2", "B/4", ...) at an image size, with learned sigma."""
    name, _, patch = size.partition("/")
    if name not in SIZES or patch not in ("2", "4", "8"):
        raise ValueError(f"unknown DiT size {size!r}; use S, B, L or XL with /2, /4 or /8")
    depth, width, heads = SIZES[name]
    return backbone_config(depth, width, heads, patch_size=int(patch),
                           latent_size=_latent_from_pixels(image_size))


def _latent_from_pixels(image_size: int) -> int:
    if image_size % VAE_DOWNSAMPLE:
        raise ValueError(f"the image size {image_size} is not a multiple of "
                         f"{VAE_DOWNSAMPLE}, the VAE's downsampling")
    return image_size // VAE_DOWNSAMPLE


def _latent_size(hints: dict, trained: int | None) -> int:
    """The latent side: the trained one, unless the hints ask for a different one (refused)."""
    asked = hints.get("latent_size")
    if asked is None and hints.get("image_size") is not None:
        asked = _latent_from_pixels(hints["image_size"])
    if trained is not None and asked is not None and asked != trained:
        raise ValueError(f"this checkpoint was trained at {trained * VAE_DOWNSAMPLE} px (a "
                         f"{trained}x{trained} latent) and cannot sample at "
                         f"{asked * VAE_DOWNSAMPLE} px: its positions are fixed to that grid")
    latent = trained if trained is not None else asked
    if latent is None:
        raise ValueError("cannot tell the image size this checkpoint was trained at; pass "
                         "--config '{\"image_size\": 256}' (or 512)")
    return latent


def infer_original_config(state: dict, hints: dict) -> BackboneConfig:
    """Shapes give widths, depth, channels, patch and classes; the trained grid comes from the
    file's fixed positions or from `hints`; heads from `hints` or upstream's size table."""
    width, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    trained = None
    if "pos_embed" in state:
        trained = math.isqrt(state["pos_embed"].shape[1]) * patch
    config = backbone_config(
        count_blocks(state, r"blocks\.(\d+)\."), width, DIT.heads(width, hints),
        hidden=state["blocks.0.mlp.fc1.weight"].shape[0], patch_size=patch,
        latent_size=_latent_size(hints, trained), in_channels=in_channels,
        out_channels=state["final_layer.linear.weight"].shape[0] // (patch * patch),
        num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,
        timestep_freq_shift=hints.get("timestep_freq_shift", 0.0),
        mlp_norm_eps=hints.get("mlp_norm_eps"))
    if "pos_embed" in state:
        _check_positions(as_mlx(state["pos_embed"]), config)
    return config


def _check_positions(stored: mx.array, config: BackboneConfig) -> None:
    expected = np.array(sincos_2d(config.width, config.grid_size))
    stored = np.array(stored.astype(mx.float32)).reshape(expected.shape)
    # a float16 copy of the table is off by up to ~5e-4
    error = float(np.abs(stored - expected).max())
    if error > 1e-3:
        raise ValueError(f"the checkpoint's pos_embed differs from DiT's fixed sin-cos table by "
                         f"{error:.3g}; mlx-imgen rebuilds that table and cannot load learned "
                         "positions")


def infer_diffusers_config(state: dict, hints: dict) -> BackboneConfig:
    """diffusers' DiT port: the same network, but its timestep frequencies use half - 1 in
    their exponent and its MLP norm eps is config.json's norm_eps (1e-5 by default). The
    trained grid is config.json's sample_size (passed in `hints["config_json"]`)."""
    stored = hints.get("config_json") or {}
    if stored.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise ValueError(f"the transformer's norm_type is {stored['norm_type']}; only DiT's "
                         "ada_norm_zero is supported")
    if stored.get("activation_fn", "gelu-approximate") != "gelu-approximate":
        raise ValueError(f"the transformer's activation is {stored['activation_fn']}; only "
                         "gelu-approximate (DiT's) is supported")
    width, in_channels, patch, _ = state["pos_embed.proj.weight"].shape
    heads = DIT.heads(width, hints, stored.get("num_attention_heads"))
    head_dim = stored.get("attention_head_dim")
    if head_dim is not None and heads * head_dim != width:
        raise ValueError(f"config.json's {heads} heads of {head_dim} do not make the width "
                         f"{width} of the weights")
    trained = stored.get("sample_size")
    if trained is None and "pos_embed" in state:
        trained = math.isqrt(state["pos_embed"].shape[1]) * patch
    return backbone_config(
        count_blocks(state, _BLOCK), width, heads,
        hidden=state["transformer_blocks.0.ff.net.0.proj.weight"].shape[0], patch_size=patch,
        latent_size=_latent_size(hints, trained), in_channels=in_channels,
        out_channels=state["proj_out_2.weight"].shape[0] // (patch * patch),
        num_classes=state[CLASS_TABLE].shape[0] - 1,
        timestep_freq_shift=hints.get("timestep_freq_shift", 1.0),
        mlp_norm_eps=hints.get("mlp_norm_eps", stored.get("norm_eps", 1e-5)))


DIT = Family(
    name="dit", title="DiT", paradigm="diffusion", autoencoder="kl", license="CC-BY-NC-4.0",
    layouts=(Layout("original", ("x_embedder.proj.weight", "final_layer.linear.weight"),
                    ORIGINAL, infer_original_config),
             Layout("diffusers", ("pos_embed.proj.weight", "proj_out_2.weight"),
                    DIFFUSERS, infer_diffusers_config)),
    sizes=SIZES, config_for=config_for, preset_table="dit",
    # DiT's and SiT's sample.py load a training checkpoint's "ema" weights (find_model)
    samples_from=("ema", "model"),
    heads_by_width={width: heads for _, width, heads in SIZES.values()})

# SiT is DiT's network and key layout (its forward drops the sigma channels) with a flow
# sampler; detection picks DiT, --family sit (or SiT's card) picks SiT
SIT = dataclasses.replace(DIT, name="sit", title="SiT", license="MIT", preset_table="sit")
