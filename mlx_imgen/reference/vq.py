"""The torch decode of an MLX `VQModel` (LlamaGen's VQ): the codebook lookup, the post-quant
conv and diffusers' VAE `Decoder`, whose blocks compute what LlamaGen's decoder computes,
loaded with the MLX weights under diffusers' names. The reference profiler decodes with it.
"""

import re
from typing import Callable

from . import load_mlx_weights, require_torch

torch = require_torch()
from torch import nn  # noqa: E402

# LlamaGen's decoder names (the MLX module's) -> diffusers' Decoder names
RENAMES = [
    (r"\.mid\.0\.", ".mid_block.resnets.0."), (r"\.mid\.2\.", ".mid_block.resnets.1."),
    (r"\.mid\.1\.", ".mid_block.attentions.0."),
    (r"\.conv_blocks\.(\d+)\.res\.", r".up_blocks.\1.resnets."),
    (r"\.conv_blocks\.(\d+)\.attn\.", r".up_blocks.\1.attentions."),
    (r"\.conv_blocks\.(\d+)\.upsample\.", r".up_blocks.\1.upsamplers.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."), (r"\.norm_out\.", ".conv_norm_out."),
    (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."), (r"(attentions\.\d+)\.q\.", r"\1.to_q."),
    (r"(attentions\.\d+)\.k\.", r"\1.to_k."), (r"(attentions\.\d+)\.v\.", r"\1.to_v."),
    (r"(attentions\.\d+)\.proj_out\.", r"\1.to_out.0."),
]


def torch_name(name: str) -> str:
    for pattern, replacement in RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


class CodeDecoder(nn.Module):
    """codes -> images: L2-normalised codebook rows, the post-quant conv, the decoder."""

    def __init__(self, config):
        super().__init__()
        from diffusers.models.autoencoders.vae import Decoder

        if config.norm_eps != 1e-6:
            raise ValueError(f"diffusers' Decoder fixes the group-norm epsilon at 1e-6; this VQ "
                             f"uses {config.norm_eps}, which the torch reference cannot mirror")
        levels = len(config.ch_mult)
        self.codebook = nn.Embedding(config.codebook_size, config.codebook_embed_dim)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)
        # LlamaGen attends at the lowest resolution, which the decoder's first block works at
        self.decoder = Decoder(
            in_channels=config.z_channels, out_channels=config.out_channels,
            up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * (levels - 1),
            block_out_channels=tuple(config.ch * m for m in config.ch_mult),
            layers_per_block=config.num_res_blocks, norm_num_groups=config.norm_groups)

    def forward(self, codes):
        """codes (B, h, w) -> images (B, 3, H, W)."""
        z = nn.functional.normalize(self.codebook(codes), dim=-1).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(z))


def load_from_mlx(torch_model: CodeDecoder, mlx_model) -> CodeDecoder:
    """Copy the decoding half of an MLX VQModel into `torch_model`, strictly by name (conv
    weights OHWI -> OIHW, the attention's 1x1 convs into linears)."""
    names = {"quantize.embedding.weight": "codebook.weight"}
    load_mlx_weights(torch_model, mlx_model, rename=lambda name: names.get(name, torch_name(name)),
                     keep=lambda name: name.startswith(("decoder.", "post_quant_conv.",
                                                        "quantize.")))
    return torch_model


def from_mlx(mlx_model, device: str | None = None) -> CodeDecoder:
    """The torch decode of an MLX VQModel with its configuration and weights, in eval mode."""
    model = load_from_mlx(CodeDecoder(mlx_model.config), mlx_model)
    return model.to(device or "cpu").eval()


def code_decoder(model: CodeDecoder, grid: tuple[int, int] | None = None) -> Callable:
    """codes (B, h*w) or (B, h, w) -> images (B, H, W, 3), NHWC as MLX's `decode_codes`.

    A flat code sequence is read as a square grid unless `grid` gives (h, w).
    """
    def decode(codes):
        codes = codes.long()
        if codes.ndim == 2:
            h, w = grid or (int(round(codes.shape[1] ** 0.5)),) * 2
            codes = codes.reshape(codes.shape[0], h, w)
        with torch.inference_mode():
            return model(codes).permute(0, 2, 3, 1)

    return decode
