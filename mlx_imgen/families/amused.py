"""aMUSEd text-to-image (masked-token): diffusers' UVit2DModel as mlx_imgen.uvit's UVit, the key
map of its diffusers files, and its config read from the hub's transformer/config.json.

The token grid is the VQ's 16x downsampling of the image: amused-256 runs 16 x 16 tokens with no
down/up stage; amused-512 runs 32 x 32 and halves it around the transformer layers.
"""

from mlx_imgen.text.clip import CLIP_L14_TEXT
from mlx_imgen.text.clip_prompts import CLIPPrompts, CLIPStandIn
from mlx_imgen.uvit import UVit, UVitConfig
from mlx_imgen.weights.keymap import (KeyMap, Rule, concatenate_rows, conv_transpose_weight,
                                      conv_weight, count_blocks, pointwise_conv_as_linear)

from .base import Family, Layout, check_config_fits, grid_from_image_size

# published transformers: layers, width, heads (both sizes share them; 512 adds the stages)
SIZES = {"256": (22, 1024, 16), "512": (22, 1024, 16)}


def _stage_rules(upstream: str, ours: str) -> tuple[Rule, ...]:
    """A UVitBlock's ConvNeXt blocks and SkipFF cross-attention pairs."""
    res = upstream + r"\.res_blocks\.(\d+)\."
    pair = upstream + r"\.attention_blocks\.(\d+)\."
    return (
        Rule(res + r"depthwise\.weight", ours + r".res_blocks.\1.depthwise.weight", conv_weight),
        Rule(res + r"depthwise\.bias", ours + r".res_blocks.\1.depthwise.bias"),
        Rule(res + r"norm\.weight", ours + r".res_blocks.\1.norm.weight"),
        Rule(res + r"channelwise_linear_1\.(weight|bias)", ours + r".res_blocks.\1.fc1.\2"),
        Rule(res + r"channelwise_linear_2\.(weight|bias)", ours + r".res_blocks.\1.fc2.\2"),
        Rule(res + r"channelwise_norm\.(gamma|beta)", ours + r".res_blocks.\1.grn.\2"),
        Rule(res + r"cond_embeds_mapper\.(weight|bias)", ours + r".res_blocks.\1.modulation.\2"),
        Rule(pair + r"kv_mapper\.(weight|bias)", ours + r".attention_blocks.\1.kv_mapper.\2"),
        Rule(pair + r"(norm[12])\.weight", ours + r".attention_blocks.\1.\2.weight"),
        Rule(pair + r"(attn[12])\.to_([qkv])\.(weight|bias)",
             ours + r".attention_blocks.\1.\2.\3.\4"),
        Rule(pair + r"(attn[12])\.to_out\.0\.(weight|bias)",
             ours + r".attention_blocks.\1.\2.out.\3"),
    )


def _pointwise(upstream: str, ours: str) -> tuple[Rule, ...]:
    """A 1x1 conv as the Linear it is over channels."""
    return (Rule(upstream + r"\.weight", ours + ".weight", pointwise_conv_as_linear),
            Rule(upstream + r"\.bias", ours + ".bias"))


_LAYER = r"transformer_layers\.(\d+)\."
KEYMAP = KeyMap(rules=(
    Rule(r"encoder_proj\.(weight|bias)", r"encoder_proj.\1"),
    Rule(r"encoder_proj_layer_norm\.weight", "encoder_norm.weight"),
    Rule(r"cond_embed\.(linear_[12])\.(weight|bias)", r"cond_embed.\1.\2"),
    Rule(r"embed\.embeddings\.weight", "embed.embeddings.weight"),
    Rule(r"embed\.layer_norm\.weight", "embed.norm.weight"),
    *_pointwise(r"embed\.conv", "embed.proj"),
    Rule(r"down_block\.downsample\.norm\.weight", "down.resample_norm.weight"),
    Rule(r"down_block\.downsample\.conv\.weight", "down.downsample.weight", conv_weight),
    Rule(r"down_block\.downsample\.conv\.bias", "down.downsample.bias"),
    *_stage_rules(r"down_block", "down"),
    Rule(r"project_to_hidden_norm\.weight", "project_to_hidden_norm.weight"),
    Rule(r"project_to_hidden\.(weight|bias)", r"project_to_hidden.\1"),
    Rule(_LAYER + r"norm1\.linear\.(weight|bias)", r"blocks.\1.modulation1.\2"),
    Rule(_LAYER + r"norm1\.norm\.weight", r"blocks.\1.norm1.weight"),
    Rule(tuple(_LAYER + rf"attn1\.to_{p}\.(weight|bias)" for p in "qkv"),
         r"blocks.\1.attn.qkv.\2", concatenate_rows),
    Rule(_LAYER + r"attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.out.\2"),
    Rule(_LAYER + r"norm2\.linear\.(weight|bias)", r"blocks.\1.modulation_cross.\2"),
    Rule(_LAYER + r"norm2\.norm\.weight", r"blocks.\1.norm_cross.weight"),
    Rule(_LAYER + r"attn2\.to_([qkv])\.(weight|bias)", r"blocks.\1.cross_attn.\2.\3"),
    Rule(_LAYER + r"attn2\.to_out\.0\.(weight|bias)", r"blocks.\1.cross_attn.out.\2"),
    Rule(_LAYER + r"norm3\.linear\.(weight|bias)", r"blocks.\1.modulation2.\2"),
    Rule(_LAYER + r"norm3\.norm\.(weight|bias)", r"blocks.\1.norm2.\2"),
    Rule(_LAYER + r"ff\.net\.0\.proj\.(weight|bias)", r"blocks.\1.mlp.proj.\2"),
    Rule(_LAYER + r"ff\.net\.2\.(weight|bias)", r"blocks.\1.mlp.out.\2"),
    Rule(r"project_from_hidden_norm\.weight", "project_from_hidden_norm.weight"),
    Rule(r"project_from_hidden\.(weight|bias)", r"project_from_hidden.\1"),
    *_stage_rules(r"up_block", "up"),
    Rule(r"up_block\.upsample\.norm\.weight", "up.resample_norm.weight"),
    Rule(r"up_block\.upsample\.conv\.weight", "up.upsample.weight", conv_transpose_weight),
    Rule(r"up_block\.upsample\.conv\.bias", "up.upsample.bias"),
    *_pointwise(r"mlm_layer\.conv1", "head.proj"),
    Rule(r"mlm_layer\.layer_norm\.weight", "head.norm.weight"),
    *_pointwise(r"mlm_layer\.conv2", "head.logits"),
))

# config.json keys that do not change the inference model (dropout) or are diffusers' records
_NOT_ARCHITECTURE = {"hidden_dropout", "attention_dropout"}
# diffusers' name -> ours, where they differ
_RENAMED = {"vocab_size": "embed_vocab_size"}


def config_from_json(config_json: dict) -> UVitConfig:
    """A UVitConfig from diffusers' transformer/config.json (missing keys take diffusers'
    defaults, which UVitConfig's are, but the grid, which config.json always names)."""
    values = {_RENAMED.get(key, key): value for key, value in config_json.items()
              if not key.startswith("_") and key not in _NOT_ARCHITECTURE}
    return UVitConfig.from_dict(values)


def infer_config(state: dict, hints: dict) -> UVitConfig:
    """The config.json the hub ships beside the weights (hints["config_json"]), checked against
    every weight's shape: a config of another model is refused on its first mismatch."""
    config_json = hints.get("config_json")
    if config_json is None:
        raise ValueError("an aMUSEd transformer is converted with its transformer/config.json, "
                         "which was not found beside the weights; pass the hub folder")
    config = config_from_json(config_json)
    if hints.get("image_size"):
        grid = grid_from_image_size(hints["image_size"])
        if grid != config.grid_size:
            raise ValueError(f"the image size {hints['image_size']} px does not fit this "
                             f"aMUSEd model's {config.grid_size} x {config.grid_size} token "
                             f"grid; pass {config.grid_size * 16} or leave it out")
    mapped = KEYMAP.apply(state, lazy=True)
    depth = count_blocks(state, _LAYER)
    if depth != config.num_hidden_layers:
        raise ValueError(f"transformer/config.json names {config.num_hidden_layers} layers but "
                         f"the weights hold {depth}; pass the config.json of these weights")
    check_config_fits(config, mapped, UVit)
    return config


def config_for(size: str, image_size: int) -> UVitConfig:
    """The published architecture of a size at an image size (for random-weight profiling)."""
    depth, width, heads = SIZES[size]
    stages = size == "512"
    return UVitConfig(num_hidden_layers=depth, hidden_size=width, num_attention_heads=heads,
                      sample_size=grid_from_image_size(image_size), downsample=stages,
                      upsample=stages)


AMUSED = Family(
    name="amused", title="aMUSEd", paradigm="masked-token", autoencoder="diffusers-vq",
    license="openrail++",
    layouts=(Layout("diffusers", ("encoder_proj.weight", "cond_embed.linear_1.weight",
                                  "transformer_layers.0.norm1.linear.weight",
                                  "mlm_layer.conv2.weight"),
                    KEYMAP, infer_config),),
    sizes=SIZES, config_for=config_for, preset_table="amused", condition="text",
    config_class=UVitConfig, model_class=UVit,
    # prompts through CLIP-L/14's text tower (penultimate states, projected pooled features)
    prompting=CLIPPrompts.from_folder, text_encoder=("clip_text", CLIP_L14_TEXT),
    stand_in_text=CLIPStandIn)
