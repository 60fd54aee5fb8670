"""Sana text-to-image (flow-matching diffusion): diffusers' SanaTransformer2DModel as
mlx_imgen.sana's SanaTransformer, the key map of its diffusers files, and its config read from
the hub's transformer/config.json.

The latent grid is DC-AE's 32x downsampling of the image: Sana 512 px runs 16 x 16 latents,
1024 px 32 x 32 (sample_size). Prompting (Gemma-2) and the "sana" preset table live elsewhere.
"""

from dataclasses import replace

from mlx_imgen.sana import SanaConfig, SanaTransformer
from mlx_imgen.text.gemma import GEMMA2_2B
from mlx_imgen.text.gemma_prompts import GemmaPrompts, GemmaStandIn
from mlx_imgen.weights.keymap import (KeyMap, Rule, concatenate_rows, conv_weight, count_blocks,
                                      pointwise_conv_as_linear)

from .base import Family, Layout, check_config_fits, grid_from_image_size

# DC-AE's downsampling: the image px per latent cell
LATENT_STRIDE = 32

# published transformers (diffusers' scripts/convert_sana_to_diffusers.py): layers, width,
# self-attention heads x head size, cross-attention heads x head size
SIZES = {"0.6b": (28, 1152, 36, 32, 16, 72), "1.6b": (20, 2240, 70, 32, 20, 112)}

_LAYER = r"transformer_blocks\.(\d+)\."
KEYMAP = KeyMap(rules=(
    Rule(r"patch_embed\.proj\.weight", "patch_embed.weight", conv_weight),
    Rule(r"patch_embed\.proj\.bias", "patch_embed.bias"),
    Rule(r"caption_projection\.(linear_[12])\.(weight|bias)", r"caption_projection.\1.\2"),
    Rule(r"caption_norm\.weight", "caption_norm.weight"),
    Rule(r"time_embed\.emb\.timestep_embedder\.linear_([12])\.(weight|bias)",
         r"time_embed.linear\1.\2"),
    Rule(r"time_embed\.linear\.(weight|bias)", r"time_modulation.\1"),
    Rule(_LAYER + r"scale_shift_table", r"blocks.\1.scale_shift_table"),
    Rule(tuple(_LAYER + rf"attn1\.to_{p}\.weight" for p in "qkv"), r"blocks.\1.attn.qkv.weight",
         concatenate_rows),
    # with attention_bias (no published Sana has it)
    Rule(tuple(_LAYER + rf"attn1\.to_{p}\.bias" for p in "qkv"), r"blocks.\1.attn.qkv.bias",
         concatenate_rows),
    Rule(_LAYER + r"attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.out.\2"),
    Rule(_LAYER + r"attn2\.to_([qkv])\.(weight|bias)", r"blocks.\1.cross_attn.\2.\3"),
    Rule(_LAYER + r"attn2\.to_out\.0\.(weight|bias)", r"blocks.\1.cross_attn.out.\2"),
    Rule(_LAYER + r"ff\.conv_inverted\.weight", r"blocks.\1.mlp.expand.weight",
         pointwise_conv_as_linear),
    Rule(_LAYER + r"ff\.conv_inverted\.bias", r"blocks.\1.mlp.expand.bias"),
    Rule(_LAYER + r"ff\.conv_depth\.weight", r"blocks.\1.mlp.depthwise.weight", conv_weight),
    Rule(_LAYER + r"ff\.conv_depth\.bias", r"blocks.\1.mlp.depthwise.bias"),
    Rule(_LAYER + r"ff\.conv_point\.weight", r"blocks.\1.mlp.project.weight",
         pointwise_conv_as_linear),
    Rule(r"scale_shift_table", "scale_shift_table"),
    Rule(r"proj_out\.(weight|bias)", r"proj_out.\1"),
))

# diffusers' records in config.json, not architecture
_NOT_ARCHITECTURE = {"dropout"}


def config_from_json(config_json: dict) -> SanaConfig:
    """A SanaConfig from diffusers' transformer/config.json (missing keys take diffusers'
    defaults, which SanaConfig's are)."""
    return SanaConfig.from_dict({key: value for key, value in config_json.items()
                                 if not key.startswith("_") and key not in _NOT_ARCHITECTURE})


def infer_config(state: dict, hints: dict) -> SanaConfig:
    """The config.json the hub ships beside the weights (hints["config_json"]), checked against
    every weight's shape: a config of another model is refused on its first mismatch. An
    `image_size` hint sets the trained latent size (the model runs at any size)."""
    config_json = hints.get("config_json")
    if config_json is None:
        raise ValueError("a Sana transformer is converted with its transformer/config.json, "
                         "which was not found beside the weights; pass the hub folder")
    config = config_from_json(config_json)
    if hints.get("image_size"):
        config = replace(config, sample_size=grid_from_image_size(hints["image_size"],
                                                                  LATENT_STRIDE))
    depth = count_blocks(state, _LAYER)
    if depth != config.num_layers:
        raise ValueError(f"transformer/config.json names {config.num_layers} layers but the "
                         f"weights hold {depth}; pass the config.json of these weights")
    mapped = KEYMAP.apply(state, lazy=True)
    check_config_fits(config, mapped, SanaTransformer)
    return config


def config_for(size: str, image_size: int) -> SanaConfig:
    """The published architecture of a size at an image size (for random-weight profiling)."""
    depth, width, heads, head_dim, cross_heads, cross_head_dim = SIZES[size]
    return SanaConfig(num_layers=depth, num_attention_heads=heads, attention_head_dim=head_dim,
                      num_cross_attention_heads=cross_heads,
                      cross_attention_head_dim=cross_head_dim, cross_attention_dim=width,
                      sample_size=grid_from_image_size(image_size, LATENT_STRIDE))


SANA = Family(
    name="sana", title="Sana", paradigm="diffusion", autoencoder="dc-ae",
    # the transformer and DC-AE under NVIDIA's non-commercial license; the text encoder under
    # Gemma's terms of use
    license="NVIDIA non-commercial + Gemma terms",
    layouts=(Layout("diffusers", ("caption_projection.linear_1.weight", "time_embed.linear.weight",
                                  "transformer_blocks.0.scale_shift_table",
                                  "transformer_blocks.0.ff.conv_depth.weight"),
                    KEYMAP, infer_config),),
    sizes=SIZES, config_for=config_for, preset_table="sana", condition="text",
    config_class=SanaConfig, model_class=SanaTransformer,
    # prompts through Gemma-2-2B-it's last hidden states, with Sana's instruction prefix
    prompting=GemmaPrompts.from_folder, text_encoder=("gemma2", GEMMA2_2B),
    stand_in_text=GemmaStandIn)
