"""Tiny diffusers SanaTransformer2DModels with every parameter random (the scale-shift tables
included), saved as the hub lays them out: transformer/config.json and
diffusion_pytorch_model.safetensors."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# the published layout (self-attention heads of 32 would be 4 x 8 here; cross-attention has
# its own heads and head size, as Sana 600M's 16 x 72 beside 36 x 32), everything tiny
TINY = dict(in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=8,
            num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=16,
            cross_attention_dim=32, caption_channels=24, mlp_ratio=2.5, attention_bias=False,
            sample_size=4, patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6)
TEXT_LENGTH = 6


def tiny_config(**overrides) -> dict:
    return {**TINY, **overrides}


def randomize_(model, seed: int):
    """Matrices scaled by fan-in, the caption norm's scale near 1, biases and tables small but
    not zero (a zero table or bias would hide a wrong key)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * noise)
            elif "scale_shift_table" in name:
                p.copy_(0.3 * noise)
            elif p.ndim > 1:
                p.copy_(noise * p[0].numel() ** -0.5)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


def tiny_sana(seed: int = 0, **overrides):
    from diffusers import SanaTransformer2DModel

    return randomize_(SanaTransformer2DModel(**tiny_config(**overrides)), seed)


def save_transformer(model, folder: Path) -> Path:
    """`folder`/transformer/ as the hub holds it (config.json, fp32 safetensors)."""
    target = Path(folder) / "transformer"
    target.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "SanaTransformer2DModel", "_diffusers_version": "0.32.0",
              **{k: v for k, v in model.config.items() if not k.startswith("_")}}
    (target / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, target / "diffusion_pytorch_model.safetensors")
    return target


def inputs(config: dict, *, batch: int = 2, height: int = 4, width: int = 6, seed: int = 0,
           lengths=(TEXT_LENGTH, 3)) -> dict:
    """NCHW latents, timesteps on diffusers' 0..1000 scale, caption states, and a caption mask
    whose rows hold `lengths` tokens then padding (as Gemma's right-padded prompts)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros((batch, TEXT_LENGTH), dtype=torch.int64)
    for row, length in enumerate(lengths[:batch]):
        mask[row, :length] = 1
    return dict(
        hidden_states=torch.randn((batch, config["in_channels"], height, width), generator=gen),
        encoder_hidden_states=torch.randn((batch, TEXT_LENGTH, config["caption_channels"]),
                                          generator=gen),
        timestep=torch.tensor([999.0, 312.5][:batch]),
        encoder_attention_mask=mask)
