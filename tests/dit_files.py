"""Tiny random DiT/SiT checkpoints in the original .pt layout, and diffusers folders made by
diffusers itself (DiTTransformer2DModel, AutoencoderKL) from tiny configs."""

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hubcache import add_to_hub_cache
from upstream import dit as upstream_dit

# an 8x8 latent (64 px at the VAE's 8x) in 2x2 patches: a 4x4 token grid
TINY = dict(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10)
TINY_CONFIG = '{"image_size": 64, "heads": 4}'
VAE_CONFIG = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                  latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2)


def tiny_dit(seed: int = 0, sit: bool = False, **overrides) -> upstream_dit.DiT:
    return upstream_dit.randomize_(upstream_dit.DiT(**{**TINY, **overrides}, sit=sit), seed)


def save_pt(model, path: Path) -> Path:
    """The released DiT/SiT files are a raw state dict, fixed pos_embed included."""
    torch.save(model.state_dict(), path)
    return path


def _randomize(model, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight") and p.ndim == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) * (fan_in ** -0.5 if p.ndim > 1 else 0.1))
    return model.eval()


def tiny_diffusers_dit(seed: int = 0, sample_size: int = 8, num_classes: int = 10):
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=4,
                                  out_channels=8, num_layers=2, sample_size=sample_size,
                                  patch_size=2, num_embeds_ada_norm=num_classes)
    _randomize(model, seed)
    # diffusers' conversion copies one embedder into every block; so does this
    with torch.no_grad():
        first = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first)
    return model


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    return _randomize(AutoencoderKL(**VAE_CONFIG), seed)


LEGACY_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def save_vae(vae, folder: Path, *, legacy_names: bool = False, scaling_factor: bool = True) -> Path:
    """save_pretrained, optionally as old diffusers wrote the sd-vae-ft-* files: attention
    projections named query/key/value/proj_attn and no scaling_factor in config.json."""
    vae.save_pretrained(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    if legacy_names:
        state = load_file(weights)
        renamed = {}
        for key, value in state.items():
            for new, old in LEGACY_ATTENTION.items():
                key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
            renamed[key] = value
        save_file(renamed, weights)
    if not scaling_factor:
        config = json.loads((folder / "config.json").read_text())
        config.pop("scaling_factor")
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def save_diffusers_pipeline(folder: Path, transformer, vae) -> Path:
    """A DiTPipeline-like folder: model_index.json, transformer/ and vae/."""
    folder.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(folder / "transformer")
    save_vae(vae, folder / "vae")
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"],
         "vae": ["diffusers", "AutoencoderKL"]}))
    return folder


def add_folders_to_hub_cache(hf_home: Path, repo: str, files: dict[str, Path]) -> None:
    """hubcache's layout for files in subfolders of a repo (transformer/config.json)."""
    add_to_hub_cache(hf_home, repo, {})
    root = Path(hf_home) / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = next((root / "snapshots").iterdir())
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
