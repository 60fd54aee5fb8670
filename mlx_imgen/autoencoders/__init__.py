"""Image <-> latent autoencoders: VQ (discrete codes) and, later, KL-VAE (continuous latents)."""

from dataclasses import dataclass
from typing import Callable

from .vq import VQConfig, VQModel, decode_flops, infer_vq_config, vq_weights_from_upstream


@dataclass(frozen=True)
class AutoencoderKind:
    config: type
    model: type
    infer_config: Callable
    weights_from_upstream: Callable
    decode_flops: Callable  # (config, h, w) -> FLOPs of one image's decode


AUTOENCODERS = {
    "vq": AutoencoderKind(VQConfig, VQModel, infer_vq_config, vq_weights_from_upstream,
                          decode_flops),
}
