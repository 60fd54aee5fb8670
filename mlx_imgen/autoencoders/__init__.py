"""Image <-> latent autoencoders: VQ (discrete codes), KL-VAE and DC-AE (continuous latents)."""

from dataclasses import dataclass
from typing import Callable

from . import dc_ae, diffusers_vq, kl
from .vq import VQConfig, VQModel, decode_flops, infer_vq_config, vq_weights_from_upstream


@dataclass(frozen=True)
class AutoencoderKind:
    config: type
    model: type
    infer_config: Callable  # (state) -> config; (state, config=dict) where a config.json comes along
    weights_from_upstream: Callable
    decode_flops: Callable  # (config, h, w) -> FLOPs of one image's decode


AUTOENCODERS = {
    "vq": AutoencoderKind(VQConfig, VQModel, infer_vq_config, vq_weights_from_upstream,
                          decode_flops),
}
# the Stable Diffusion KL-f8 VAE in diffusers' layout, which converts with its config.json
AUTOENCODERS["kl"] = AutoencoderKind(kl.KLConfig, kl.AutoencoderKL, kl.infer_kl_config,
                                     kl.kl_weights_from_upstream, kl.decode_flops)
# aMUSEd's VQ-GAN (diffusers `VQModel`), decode only, which converts with its config.json
AUTOENCODERS["diffusers-vq"] = AutoencoderKind(
    diffusers_vq.DiffusersVQConfig, diffusers_vq.DiffusersVQModel,
    diffusers_vq.infer_diffusers_vq_config, diffusers_vq.diffusers_vq_weights_from_upstream,
    diffusers_vq.decode_flops)
# Sana's 32x DC-AE (diffusers `AutoencoderDC`), decode only, which converts with its config.json
AUTOENCODERS["dc-ae"] = AutoencoderKind(dc_ae.DCAEConfig, dc_ae.DCAE, dc_ae.infer_dc_ae_config,
                                        dc_ae.dc_ae_weights_from_upstream, dc_ae.decode_flops)
