"""transformers' CLIP checkpoints (CLIPModel, CLIPTextModel[WithProjection],
CLIPVisionModel[WithProjection]) to the towers of clip.py: key maps, and a hub folder loaded."""

from pathlib import Path

from ..weights.jsonfile import read_json
from ..weights.keymap import KeyMap, KeyMismatchError, Rule, conv_weight, load_checked
from ..weights.readers import read_state_dict
from .clip import CLIPTextTower, CLIPVisionTower, configs_from_hf

_BLOCK = [
    Rule(r"encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"blocks.\1.norm1.\2"),
    Rule(r"encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    Rule(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    Rule(r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.out.\2"),
    Rule(r"encoder\.layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
]


def _prefixed(prefix: str, rules: list[Rule]) -> tuple[Rule, ...]:
    return tuple(Rule(prefix + r.source, r.target, r.transform) for r in rules)


TEXT_KEYS = KeyMap(
    rules=(
        Rule(r"text_model\.embeddings\.token_embedding\.weight", "token_embed.weight"),
        Rule(r"text_model\.embeddings\.position_embedding\.weight", "pos_embed.weight"),
        *_prefixed(r"text_model\.", _BLOCK),
        Rule(r"text_model\.final_layer_norm\.(weight|bias)", r"norm.\1"),
        Rule(r"text_projection\.weight", "projection.weight"),
    ),
    ignore=(r"text_model\.embeddings\.position_ids",),
)

VISION_KEYS = KeyMap(
    rules=(
        Rule(r"vision_model\.embeddings\.patch_embedding\.weight", "patch_embed.proj.weight",
             conv_weight),
        Rule(r"vision_model\.embeddings\.class_embedding", "class_embed"),
        Rule(r"vision_model\.embeddings\.position_embedding\.weight", "pos_embed.weight"),
        Rule(r"vision_model\.pre_layrnorm\.(weight|bias)", r"pre_norm.\1"),  # sic, the hub's name
        *_prefixed(r"vision_model\.", _BLOCK),
        Rule(r"vision_model\.post_layernorm\.(weight|bias)", r"post_norm.\1"),
        Rule(r"visual_projection\.weight", "projection.weight"),
    ),
    ignore=(r"vision_model\.embeddings\.position_ids",),
)

# the temperature of CLIP's contrastive loss: CLIP score does not use it
IGNORED = ("logit_scale",)


def _tower(key: str) -> str | None:
    if key.startswith(("text_model.", "text_projection.")):
        return "text"
    if key.startswith(("vision_model.", "visual_projection.")):
        return "vision"
    return None


def clip_weights_from_hf(state: dict, *, lazy: bool = False) -> dict[str, dict]:
    """A transformers CLIP state dict as {"text": {...}, "vision": {...}} in the towers' keys,
    a tower absent when the checkpoint has none of its keys (aMUSEd's text encoder is a
    CLIPTextModelWithProjection alone). Keys of neither tower are refused, listed."""
    parts: dict[str, dict] = {}
    unknown = []
    for key, value in state.items():
        tower = _tower(key)
        if tower is not None:
            parts.setdefault(tower, {})[key] = value
        elif key not in IGNORED:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:12]) + (f" and {len(unknown) - 12} more"
                                                   if len(unknown) > 12 else "")
        raise KeyMismatchError(f"The checkpoint has keys of no CLIP tower ({len(unknown)}): "
                               f"{shown}; pass a transformers CLIP checkpoint")
    maps = {"text": TEXT_KEYS, "vision": VISION_KEYS}
    return {tower: maps[tower].apply(weights, lazy=lazy) for tower, weights in parts.items()}


def load_towers(config: dict, state: dict, what: str = "checkpoint"):
    """(text tower | None, vision tower | None) from a hub config.json dict and its state dict,
    every tower the config describes checked strictly against the weights (missing, unexpected
    and mis-shaped keys listed)."""
    text_config, vision_config = configs_from_hf(config)
    weights = clip_weights_from_hf(state)
    towers = []
    for name, cfg, cls in (("text", text_config, CLIPTextTower),
                           ("vision", vision_config, CLIPVisionTower)):
        if cfg is None:
            if name in weights:
                raise KeyMismatchError(f"The {what} holds {name} tower weights its config.json "
                                       f"does not describe; pass a matching config")
            towers.append(None)
            continue
        tower = cls(cfg)
        load_checked(tower, weights.get(name, {}), f"{what}'s {name} tower")
        towers.append(tower)
    return tuple(towers)


def load_hf_folder(folder: str | Path):
    """(text tower | None, vision tower | None) from a transformers CLIP folder in the hub
    layout: config.json and model.safetensors (or pytorch_model.bin, read without pickle)."""
    folder = Path(folder)
    config = read_json(folder / "config.json", "pass a transformers CLIP folder")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return load_towers(config, read_state_dict(folder / name), str(folder / name))
    raise ValueError(f"{folder} has no model.safetensors or pytorch_model.bin; pass a "
                     "transformers CLIP folder")
