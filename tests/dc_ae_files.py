"""Tiny diffusers AutoencoderDCs in Sana's DC-AE layout (ResBlock stages, then EfficientViT
stages with a 5x5 multi-scale branch; interpolate up-sampling, RMSNorm, SiLU), built by
diffusers itself with every parameter randomised, saved as a pipeline's vae/ folder."""

from pathlib import Path

from diffusers_vq_files import randomized

# 4 stages (8x), widths that repeat evenly (latents x8, each up-sampling x2 or x4), 2 and 4
# heads of 8 channels in the EfficientViT stages, 1-2 layers a stage
TINY_DC_AE = dict(
    in_channels=3, latent_channels=4, attention_head_dim=8,
    decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    decoder_block_out_channels=(8, 16, 32, 32), decoder_layers_per_block=(1, 2, 1, 2),
    decoder_qkv_multiscales=((), (), (5,), (5,)),
    encoder_block_types="ResBlock", encoder_block_out_channels=(8, 16, 32, 32),
    encoder_layers_per_block=(1, 1, 1, 1), encoder_qkv_multiscales=((), (), (), ()),
    upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
    scaling_factor=0.41407)


def tiny_dc_ae(seed: int = 0, **overrides):
    from diffusers import AutoencoderDC

    return randomized(AutoencoderDC(**{**TINY_DC_AE, **overrides}), seed)


def save_vae(model, pipeline_folder: Path) -> Path:
    """vae/config.json and diffusion_pytorch_model.safetensors; returns the vae folder."""
    folder = Path(pipeline_folder) / "vae"
    model.save_pretrained(folder)
    return folder
