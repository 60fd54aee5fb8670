"""diffusers' VQModel as aMUSEd uses it: sampled codes -> images through a codebook lookup,
post_quant_conv and diffusers' Decoder (kl.py's, shared with the KL VAE), NHWC. Only the decode
path is ported: aMUSEd never encodes images, so the encoder and quant_conv are dropped.

diffusers' pipeline clips the decoder's output to [0, 1]; `decode_codes` maps that onto the
[-1, 1] every other autoencoder here returns, so Pipeline.decode serves it unchanged.
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_imgen.weights.keymap import Rule, map_keys

from .kl import ATTENTION_NAMES, KL_KEY_RULES, Decoder, DecoderConfig, decoder_flops
from .layers import UpstreamAttentionNames, conv_flops


@dataclass
class DiffusersVQConfig(DecoderConfig):
    """Defaults: aMUSEd's vqvae/config.json (amused-256 and amused-512 share one VQ-GAN)."""
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512, 768)
    latent_channels: int = 64
    mid_attention: bool = False
    num_vq_embeddings: int = 8192
    vq_embed_dim: int = 64


class Codebook(nn.Module):
    """The VectorQuantizer's embedding; looked up as is (no normalisation, unlike LlamaGen's)."""

    def __init__(self, size: int, dims: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dims)

    def lookup(self, codes: mx.array) -> mx.array:
        return self.embedding(codes)


class DiffusersVQModel(UpstreamAttentionNames, nn.Module):
    ATTENTION_NAMES = ATTENTION_NAMES

    def __init__(self, config: DiffusersVQConfig):
        super().__init__()
        self.config = config
        self.quantize = Codebook(config.num_vq_embeddings, config.vq_embed_dim)
        self.post_quant_conv = nn.Conv2d(config.vq_embed_dim, config.latent_channels, 1)
        self.decoder = Decoder(config)

    @property
    def dtype(self) -> mx.Dtype:
        return self.post_quant_conv.weight.dtype

    def decode(self, latents: mx.array) -> mx.array:
        """(B, h, w, vq_embed_dim) codebook vectors -> the decoder's raw output (B, H, W, 3),
        nominally in [0, 1]."""
        return self.decoder(self.post_quant_conv(latents))

    def decode_codes(self, codes: mx.array) -> mx.array:
        """Codes (B, g, g) -> images (B, H, W, 3) in [-1, 1]: diffusers' output clipped to
        [0, 1], then mapped x * 2 - 1."""
        raw = self.decode(self.quantize.lookup(codes))
        # checked before clipping, which would turn inf into a plausible 0 or 1
        if not mx.all(mx.isfinite(raw)).item():
            if self.dtype == mx.float32:
                raise ValueError("the VQ-GAN decoded non-finite values in float32, so its "
                                 "weights are not a working VQ-GAN's; convert the model again "
                                 "from the hub repo's files")
            raise ValueError(
                f"the VQ-GAN decoded non-finite values in {self.dtype} (aMUSEd's VQ-GAN "
                "overflows in float16, which diffusers avoids by upcasting it); convert the "
                "model again with --dtype float32")
        return mx.clip(raw, 0.0, 1.0) * 2.0 - 1.0


# ---------------------------------------------------------------- diffusers checkpoint keys

# the decoder's keys are the KL VAE's (diffusers' Decoder either way); the codebook is new
VQ_KEY_RULES: list[Rule] = [*KL_KEY_RULES, Rule(r"(quantize\.embedding\.weight)", r"\1")]
# the encoder side, dropped: aMUSEd samples codes and never encodes an image
ENCODER_PREFIXES = ("encoder.", "quant_conv.")

SUPPORTED = {"up_block_types": "UpDecoderBlock2D", "norm_type": "group", "act_fn": "silu"}


def infer_diffusers_vq_config(state: dict, config: dict | None = None) -> DiffusersVQConfig:
    """The DiffusersVQConfig of a diffusers VQModel from its config.json (vqvae/config.json);
    the codebook's shape is checked here, the decoder's when the weights load."""
    if config is None:
        raise ValueError("a diffusers VQ-GAN converts from its folder: its config.json must "
                         "come with the weights (pass the folder, not the weights file)")
    for key, supported in SUPPORTED.items():
        values = config.get(key, supported)
        if any(v != supported for v in ([values] if isinstance(values, str) else values)):
            raise ValueError(f"the VQ-GAN's {key} is {values}; only {supported} (aMUSEd's) is "
                             "supported")
    if "quantize.embedding.weight" not in state or "decoder.conv_in.weight" not in state:
        found = ", ".join(sorted(state)[:4])
        raise ValueError(f"not a diffusers VQModel checkpoint: expected keys "
                         f"quantize.embedding.weight and decoder.conv_in.weight, found {found}")
    defaults = DiffusersVQConfig()
    latent_channels = config.get("latent_channels", defaults.latent_channels)
    result = DiffusersVQConfig(
        block_out_channels=tuple(config.get("block_out_channels", defaults.block_out_channels)),
        layers_per_block=config.get("layers_per_block", defaults.layers_per_block),
        latent_channels=latent_channels,
        out_channels=config.get("out_channels", defaults.out_channels),
        norm_groups=config.get("norm_num_groups", defaults.norm_groups),
        mid_attention=config.get("mid_block_add_attention", True),
        num_vq_embeddings=config.get("num_vq_embeddings", defaults.num_vq_embeddings),
        vq_embed_dim=config.get("vq_embed_dim") or latent_channels)
    expected = (result.num_vq_embeddings, result.vq_embed_dim)
    stored = tuple(state["quantize.embedding.weight"].shape)
    if stored != expected:
        raise ValueError(f"the VQ-GAN's codebook is {stored[0]}x{stored[1]}, but its config.json "
                         f"says {expected[0]}x{expected[1]}; pass the config.json of these weights")
    return result


def diffusers_vq_weights_from_upstream(state: dict, lazy: bool = False) -> dict[str, mx.array]:
    decoding = {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIXES)}
    return map_keys(decoding, VQ_KEY_RULES, lazy=lazy)


def decode_flops(config: DiffusersVQConfig, h: int, w: int) -> float:
    """One image's decode from an h x w code grid: post_quant_conv and the decoder."""
    return (conv_flops(h, w, config.vq_embed_dim, config.latent_channels)
            + decoder_flops(config, h, w))
