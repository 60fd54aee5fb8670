"""Encoders stored as components of a converted folder (`text_encoder/`, `image_encoder/`):
config.json names the model type and holds its config, the weights use mlx-imgen keys and may
be quantized (the quantized layers are listed in config.json, as for transformers).

A CLIP scorer folder holds both towers; a text-to-image folder (aMUSEd) holds a text encoder
only, loaded by the same `load_text_encoder`."""

import dataclasses
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..quantize import apply_structure
from ..weights.jsonfile import read_json
from ..weights.shards import load_weights
from . import clip, gemma

# model type in config.json -> (config class, module class)
ENCODERS = {
    "clip_text": (clip.CLIPTextConfig, clip.CLIPTextTower),
    "clip_vision": (clip.CLIPVisionConfig, clip.CLIPVisionTower),
    "gemma2": (gemma.GemmaConfig, gemma.GemmaTextEncoder),  # Sana's; needs mlx-lm
}
TEXT_TYPES = ("clip_text", "gemma2")
IMAGE_TYPES = ("clip_vision",)


def config_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)


def config_from_dict(model_type: str, values: dict):
    config_class = ENCODERS[model_type][0]
    if hasattr(config_class, "from_dict"):
        return config_class.from_dict(values)
    return config_class(**values)


def build_encoder(model_type: str, config) -> nn.Module:
    """The encoder's structure (MLX initialises its parameters lazily, so this is cheap)."""
    return ENCODERS[model_type][1](config)


def quantizable_layers(model: nn.Module, group_size: int) -> list[str]:
    """Paths of the Linear and Embedding layers whose input width `group_size` divides (the
    others, and convolutions such as the patch embedding, stay in float)."""
    return [path for path, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Embedding)) and hasattr(module, "to_quantized")
            and module.weight.shape[-1] % group_size == 0]


def _load(folder: Path, kinds: tuple[str, ...], what: str) -> nn.Module:
    folder = Path(folder)
    config = read_json(folder / "config.json")
    model_type = config.get("model_type")
    if model_type not in kinds or not isinstance(config.get("config"), dict):
        raise ValueError(f"{folder / 'config.json'} does not describe {what} (model_type "
                         f"{model_type!r}, expected {' or '.join(kinds)}); convert the model again")
    model = build_encoder(model_type, config_from_dict(model_type, config["config"]))
    if config.get("quantization"):
        apply_structure(model, config["quantization"])  # the stored layers are already quantized
    model.load_weights(list(load_weights(folder).items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model


def load_text_encoder(folder: str | Path) -> nn.Module:
    """The text encoder stored in `folder` (a pipeline folder's text_encoder/)."""
    return _load(Path(folder), TEXT_TYPES, "a text encoder")


def load_image_encoder(folder: str | Path) -> nn.Module:
    """The image encoder stored in `folder` (a CLIP folder's image_encoder/)."""
    return _load(Path(folder), IMAGE_TYPES, "an image encoder")
