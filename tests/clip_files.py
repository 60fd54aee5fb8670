"""Tiny random CLIP models made by `transformers` itself and saved in the hub layout
(config.json, model.safetensors, preprocessor_config.json), for parity tests and hub caches.

The weights are drawn large enough that a wrong LayerNorm epsilon, activation or pooling
position changes the outputs well past the parity tolerance: embeddings are small (so the first
LayerNorm's variance is near its epsilon), linear weights are scaled by fan-in (activations of
order 1, where quick-GELU and GELU differ), norm scales and biases are far from 1 and 0.
"""

from pathlib import Path

import torch

KINDS = ("clip", "text_with_projection", "vision")

# 77 positions as CLIP has; the vocabulary covers a tiny trained CLIP tokenizer (a few hundred
# merges on 512 byte tokens, plus the two specials); 32 px images in 8 px patches
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, vocab_size=2048, hidden_act="quick_gelu",
            layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8, num_channels=3, hidden_act="quick_gelu",
              layer_norm_eps=1e-5)
PROJECTION_DIM = 16
IMAGE_SIZE = 32


def tiny_clip_model(kind: str = "clip", *, seed: int = 0, text: dict | None = None,
                    vision: dict | None = None, projection_dim: int = PROJECTION_DIM):
    """A transformers CLIPModel, CLIPTextModelWithProjection or CLIPVisionModelWithProjection
    with random weights; `text` and `vision` override the tiny configs' values."""
    from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection,
                              CLIPVisionConfig, CLIPVisionModelWithProjection)

    text_config = {**TEXT, **(text or {}), "projection_dim": projection_dim}
    vision_config = {**VISION, **(vision or {}), "projection_dim": projection_dim}
    if kind == "clip":
        config = CLIPConfig(text_config=text_config, vision_config=vision_config,
                            projection_dim=projection_dim)
        model = CLIPModel(config)
    elif kind == "text_with_projection":
        model = CLIPTextModelWithProjection(CLIPTextConfig(**text_config))
    elif kind == "vision":
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision_config))
    else:
        raise ValueError(f"unknown tiny CLIP kind {kind!r}; use one of {KINDS}")
    model.config._attn_implementation = "eager"
    return randomize_(model, seed)


def randomize_(model, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif "embedding" in name and "patch" not in name:
                # token, position and class vectors: small, so LayerNorm's epsilon matters
                p.copy_(0.01 * noise)
            elif p.ndim > 1:
                p.copy_(noise * p[0].numel() ** -0.5)
            else:
                p.copy_(noise)  # logit_scale
    return model.eval()


def write_tiny_clip(folder, *, kind: str = "clip", seed: int = 0, text: dict | None = None,
                    vision: dict | None = None, projection_dim: int = PROJECTION_DIM,
                    image_size: int = IMAGE_SIZE):
    """Save a tiny random CLIP of `kind` into `folder` as the hub has it (safetensors), with a
    CLIPImageProcessor preprocessor_config.json for `image_size` px; returns the model."""
    from transformers import CLIPImageProcessorPil

    folder = Path(folder)
    model = tiny_clip_model(kind, seed=seed, text=text, vision=vision,
                            projection_dim=projection_dim)
    model.save_pretrained(folder, safe_serialization=True)
    if kind != "text_with_projection":
        # the PIL processor: the default one needs torchvision, which the dev extra lacks
        processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                          crop_size={"height": image_size, "width": image_size})
        processor.save_pretrained(folder)
    return model
