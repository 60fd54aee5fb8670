"""Tiny diffusers VQModels (aMUSEd's VQ-GAN layout), built by diffusers itself with every
parameter randomised, saved as a pipeline's vqvae/ folder."""

from pathlib import Path

import torch

# 3 levels (4x), a codebook whose width differs from the latent channels, groups of 4
TINY_VQ = dict(block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=4,
               num_vq_embeddings=32, vq_embed_dim=3, norm_num_groups=4,
               down_block_types=("DownEncoderBlock2D",) * 3,
               up_block_types=("UpDecoderBlock2D",) * 3,
               lookup_from_codebook=True, force_upcast=True)


def randomized(model, seed: int):
    """Every parameter drawn anew: norms around 1, biases small, weights at 1/sqrt(fan-in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise * p[0].numel() ** -0.5)
    return model.eval()


def tiny_vq(seed: int = 0, **overrides):
    from diffusers import VQModel

    return randomized(VQModel(**{**TINY_VQ, **overrides}), seed)


def save_vqvae(model, pipeline_folder: Path, *, fp16_variant: bool = True) -> Path:
    """vqvae/config.json and diffusion_pytorch_model.safetensors, and with `fp16_variant` the
    .fp16.safetensors diffusers writes for variant="fp16"; returns the vqvae folder."""
    folder = Path(pipeline_folder) / "vqvae"
    model.save_pretrained(folder)
    if fp16_variant:
        model.half().save_pretrained(folder, variant="fp16")
        model.float()
    return folder
