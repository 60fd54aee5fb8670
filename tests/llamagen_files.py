"""Tiny random LlamaGen checkpoints in the exact upstream formats, written with torch.save."""

from pathlib import Path

import torch

from upstream import llamagen_gpt, llamagen_vq
from upstream.llamagen_vq import tiny_vq_config

# 4x4 tokens: image_size 64 at upstream's 16x downsampling; the tiny VQ itself downsamples 2x
TINY_CONFIG = '{"heads": 4, "image_size": 64}'


def tiny_gpt(seed: int = 0) -> llamagen_gpt.GPT:
    return llamagen_gpt.randomize_(llamagen_gpt.GPT(llamagen_gpt.tiny_gpt_args()), seed).eval()


def draw_vq_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter of a torch VQ drawn (norm affines and biases too), in place, from torch's
    current seed: convolutions scaled by fan-in, the codebook unit normal."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0, module.weight[0].numel() ** -0.5)
                module.bias.normal_(0, 0.1)
            elif isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0, 1)
    return model


def tiny_vq(seed: int = 0) -> llamagen_vq.VQModel:
    torch.manual_seed(seed)
    return draw_vq_weights(llamagen_vq.VQModel(**tiny_vq_config()).eval())


def save_gpt(model, path: Path, fsdp: bool = False) -> Path:
    """DDP checkpoints nest the weights under "model"; FSDP ones (XXL, 3B) are a raw state dict."""
    state = model.state_dict()
    torch.save(state if fsdp else {"model": state}, path)
    return path


def save_vq(model, path: Path) -> Path:
    torch.save({"model": model.state_dict()}, path)
    return path
