"""The torch KL-VAE of an MLX `AutoencoderKL`: diffusers' own AutoencoderKL, whose parameter
names the MLX module shares, loaded with the MLX weights. NHWC at `latent_decoder` and
`latent_encoder`, as MLX's. The reference profiler decodes diffusion latents with it.
"""

from typing import Callable

from mlx_imgen.autoencoders.kl import KLConfig

from . import load_mlx_weights, require_torch, torch_dtype

torch = require_torch()

DIFFUSERS_MISSING = ("the torch KL-VAE is diffusers' AutoencoderKL; install it with "
                     "pip install 'mlx-imgen[reference]'")


def build(config: KLConfig):
    """diffusers' AutoencoderKL with the layout of `config` (random weights)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ValueError(DIFFUSERS_MISSING) from None
    if config.norm_eps != 1e-6:
        raise ValueError(f"diffusers' AutoencoderKL fixes the group-norm epsilon at 1e-6; this "
                         f"VAE uses {config.norm_eps}, which the torch reference cannot mirror")
    levels = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=config.in_channels, out_channels=config.out_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
        norm_num_groups=config.norm_groups, scaling_factor=config.scaling_factor,
        shift_factor=config.shift_factor, use_quant_conv=config.quant_conv,
        use_post_quant_conv=config.post_quant_conv,
        mid_block_add_attention=config.mid_attention)


def load_from_mlx(torch_model, mlx_model):
    """Copy an MLX AutoencoderKL's weights into diffusers' model, strictly (conv weights OHWI
    -> OIHW); the torch model takes the MLX model's dtype."""
    torch_model.to(torch_dtype(mlx_model.decoder.conv_in.weight.dtype))
    load_mlx_weights(torch_model, mlx_model)
    return torch_model


def from_mlx(mlx_model, device: str | None = None):
    """diffusers' AutoencoderKL with an MLX AutoencoderKL's configuration and weights, in eval
    mode on `device`."""
    model = load_from_mlx(build(mlx_model.config), mlx_model)
    return model.to(device or "cpu").eval()


def _factors(model, scaling_factor, shift):
    scale = model.config.scaling_factor if scaling_factor is None else scaling_factor
    return scale, (model.config.shift_factor or 0.0) if shift is None else shift


def latent_decoder(model, scaling_factor: float | None = None,
                   shift: float | None = None) -> Callable:
    """latents (B, h, w, C) in the samplers' scaled space -> images (B, H, W, 3), as MLX's
    `decode_latents`: z = latents / scaling_factor + shift, decoded. The factors default to the
    model's configuration."""
    scale, shift = _factors(model, scaling_factor, shift)

    def decode(latents):
        z = latents.to(torch.float32) / scale + shift
        with torch.inference_mode():
            images = model.decode(z.permute(0, 3, 1, 2).to(model.dtype)).sample
        return images.permute(0, 2, 3, 1)

    return decode


def latent_encoder(model, scaling_factor: float | None = None,
                   shift: float | None = None) -> Callable:
    """images (B, H, W, 3) in [-1, 1] -> the posterior mean in the samplers' scaled space
    (B, h, w, C), as MLX's `encode_latents` without a key."""
    scale, shift = _factors(model, scaling_factor, shift)

    def encode(images):
        with torch.inference_mode():
            posterior = model.encode(images.permute(0, 3, 1, 2).to(model.dtype)).latent_dist
        return ((posterior.mean - shift) * scale).permute(0, 2, 3, 1)

    return encode
