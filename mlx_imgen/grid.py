"""The controlled grid: every size built for all three paradigms on the same 16x16 token grid.

Blocks are identical across paradigms (pre-norm LayerNorm, GELU-tanh MLP, fused qkv); each
paradigm keeps only what it needs: a causal mask, class prefix and 2-D RoPE for next-token; a
mask token, learned positions and adaLN for masked-token; 2x2 latent patches, sin-cos positions
and adaLN over class and timestep for diffusion.
"""

from .backbone import BackboneConfig
from .paradigms import PARADIGMS, FlowPlan, MaskedTokenPlan, NextTokenPlan

GRID_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
VQ_DOWNSAMPLE = 16       # discrete paradigms: VQ codes at 1/16 resolution, 16384 codes
VQ_CODEBOOK = 16384
VAE_DOWNSAMPLE = 8       # diffusion: 4-channel KL latents at 1/8 resolution in 2x2 patches
LATENT_CHANNELS = 4
PATCH_SIZE = 2


def token_grid(image_size: int) -> int:
    if image_size < 1 or image_size % VQ_DOWNSAMPLE:
        raise ValueError(f"image size {image_size} is not a multiple of {VQ_DOWNSAMPLE} "
                         f"(the token grid's stride); use 256, 384 or 512")
    return image_size // VQ_DOWNSAMPLE


def grid_config(paradigm: str, size: str, image_size: int = 256) -> BackboneConfig:
    if size not in GRID_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(GRID_SIZES)}")
    depth, width, heads = GRID_SIZES[size]
    common = dict(depth=depth, width=width, heads=heads, grid_size=token_grid(image_size),
                  mlp="gelu_tanh", norm="layer", norm_eps=1e-6, qkv_bias=True, out_bias=True)
    if paradigm == "next-token":
        return BackboneConfig(**common, causal=True, conditioning="prefix", positions="rope2d",
                              rope_prefix="identity", vocab_size=VQ_CODEBOOK)
    if paradigm == "masked-token":
        return BackboneConfig(**common, conditioning="adaln", norm_affine=False,
                              final_norm_affine=False, positions="learned",
                              vocab_size=VQ_CODEBOOK, mask_token=True, head_bias=True)
    if paradigm == "diffusion":
        return BackboneConfig(**common, input="patches", in_channels=LATENT_CHANNELS,
                              norm_affine=False, final_norm_affine=False,
                              patch_size=PATCH_SIZE, conditioning="adaln", timestep=True,
                              positions="sincos2d", head_bias=True)
    raise ValueError(f"unknown paradigm {paradigm!r}; choose one of {', '.join(PARADIGMS)}")


def default_plan(paradigm: str, config: BackboneConfig, steps: int | None = None):
    """The sampling plan the grid is compared under (guidance scale s 4, or 3 for masked
    tokens); `steps` overrides the step count."""
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if paradigm == "next-token":
        return NextTokenPlan(num_tokens=config.num_tokens, cfg_scale=4.0, top_k=2000)
    if paradigm == "masked-token":
        return MaskedTokenPlan(num_tokens=config.num_tokens, steps=steps or 16, cfg_scale=3.0)
    return FlowPlan(steps=steps or 50, solver="euler", cfg_scale=4.0)


def latent_shape(config: BackboneConfig) -> tuple[int, int, int]:
    side = config.grid_size * config.patch_size
    return (side, side, config.in_channels)
