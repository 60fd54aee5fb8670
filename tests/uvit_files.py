"""Tiny diffusers UVit2DModels (aMUSEd's transformer) with every parameter random, saved as the
hub lays them out: transformer/config.json, diffusion_pytorch_model.safetensors and the fp16
variant diffusion_pytorch_model.fp16.safetensors."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# the real token ids: codebook 8192, embedding rows 8256, mask id 8255; everything else tiny
TINY = dict(hidden_size=32, cond_embed_dim=16, micro_cond_encode_dim=8, micro_cond_embed_dim=40,
            encoder_hidden_size=24, vocab_size=8256, codebook_size=8192, in_channels=16,
            block_out_channels=24, num_res_blocks=2, block_num_heads=2, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=48, layer_norm_eps=1e-6,
            ln_elementwise_affine=True, sample_size=4)
MASK_ID = 8255
TEXT_LENGTH = 7


def tiny_config(*, stages: bool = False, use_bias: bool = False, **overrides) -> dict:
    """With `stages`, the 512 model's down and up stages around an 8 x 8 grid."""
    config = dict(TINY, use_bias=use_bias, downsample=stages, upsample=stages,
                  sample_size=8 if stages else 4)
    return {**config, **overrides}


def randomize_(model, seed: int):
    """Matrices scaled by fan-in, norm scales near 1, biases and GRN's gamma and beta (zero
    upstream, which would hide them) small but not zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "channelwise_norm" in name:
                p.copy_(0.3 * noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim > 1 and "embeddings" not in name:
                p.copy_(noise * p[0].numel() ** -0.5)
            elif "embeddings" in name:
                p.copy_(noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


def tiny_uvit(seed: int = 0, **config_args):
    from diffusers import UVit2DModel

    return randomize_(UVit2DModel(**tiny_config(**config_args)), seed)


def save_transformer(model, folder: Path) -> Path:
    """`folder`/transformer/ as the hub holds it (config.json, fp32 and fp16 safetensors)."""
    target = Path(folder) / "transformer"
    target.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "UVit2DModel", "_diffusers_version": "0.25.0",
              **{k: v for k, v in model.config.items() if not k.startswith("_")}}
    (target / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, target / "diffusion_pytorch_model.safetensors")
    save_file({k: v.half() for k, v in state.items()},
              target / "diffusion_pytorch_model.fp16.safetensors")
    return target


def inputs(config: dict, batch: int = 2, seed: int = 0) -> dict:
    """Token grids with some masked positions, text states, pooled embeddings and the
    micro-conditions aMUSEd's pipeline passes ([width, height, crop top, crop left, score])."""
    gen = torch.Generator().manual_seed(seed)
    g = config["sample_size"]
    tokens = torch.randint(0, config["codebook_size"], (batch, g, g), generator=gen)
    masked = torch.rand((batch, g, g), generator=gen) < 0.5
    tokens = torch.where(masked, torch.full_like(tokens, MASK_ID), tokens)
    size = g * 16
    return dict(
        input_ids=tokens,
        encoder_hidden_states=torch.randn((batch, TEXT_LENGTH, config["encoder_hidden_size"]),
                                          generator=gen),
        pooled_text_emb=torch.randn((batch, config["cond_embed_dim"]), generator=gen),
        micro_conds=torch.tensor([[size, size, 0, 0, 6]] * batch, dtype=torch.float32))
