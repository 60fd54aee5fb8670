"""Analytic FLOPs of backbone forward passes and of whole sampling plans.

Convention: FLOPs = 2 x multiply-accumulates. Counted: linear layers, convolutions, and the two
attention matmuls (QK^T, AV). Left out: elementwise ops, norms, softmax and embedding lookups.
A per-sample layer (adaLN modulation, timestep MLP) counts once per sample, not per token.
"""

from dataclasses import dataclass

from .backbone import BackboneConfig
from .paradigms import MaskedTokenPlan, NextTokenPlan, diffusion


@dataclass
class Flops:
    linear: float = 0.0
    attention: float = 0.0

    @property
    def total(self) -> float:
        return self.linear + self.attention

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.linear + other.linear, self.attention + other.attention)

    def __mul__(self, k: float) -> "Flops":
        return Flops(self.linear * k, self.attention * k)

    __rmul__ = __mul__


def forward_flops(cfg: BackboneConfig, length: int | None = None, context: int | None = None,
                  text_length: int = 0) -> Flops:
    """One sample's forward pass over `length` new positions attending to `context` positions.

    Defaults: a full pass (prefix, registers and every image token) attending to itself.
    """
    q = cfg.seq_len if length is None else length
    kv = q if context is None else context
    w, inner = cfg.width, cfg.heads * cfg.dims_per_head
    extra = cfg.prefix_tokens + cfg.registers
    # image tokens in this pass: a full pass holds them all, a decode step holds only new ones
    image_q = max(q - extra, 0) if context is None or context == q else q
    mlp_matrices = 3 if cfg.mlp == "swiglu" else 2
    per_token = 2 * (w * 3 * inner + inner * w + mlp_matrices * w * cfg.hidden)
    attention = 2 * 2 * q * kv * inner
    linear = per_token * q
    if cfg.context_dim and text_length:
        linear += 2 * (2 * q * w * inner + 2 * text_length * cfg.context_dim * inner)
        attention += 2 * 2 * q * text_length * inner
    linear *= cfg.depth
    attention *= cfg.depth
    if cfg.conditioning == "adaln":
        linear += cfg.depth * 2 * w * 6 * w + 2 * w * 2 * w
    if cfg.timestep:
        linear += 2 * (256 * w + w * w)
    if cfg.input == "patches":
        linear += 2 * image_q * cfg.patch_size ** 2 * cfg.in_channels * w
    head_rows = q if cfg.causal else image_q
    linear += 2 * head_rows * w * cfg.output_dims
    return Flops(float(linear), float(attention))


def plan_flops(cfg: BackboneConfig, plan) -> Flops:
    """FLOPs of the transformer passes that sample one image, CFG included."""
    guidance = 2 if plan.cfg_scale != 1.0 else 1
    if isinstance(plan, NextTokenPlan):
        prefix = cfg.prefix_tokens
        total = forward_flops(cfg, prefix, prefix)
        for i in range(1, plan.num_tokens):
            total = total + forward_flops(cfg, 1, prefix + i)
        return total * guidance
    # an adaptive diffusion plan (dopri5) counts the passes its last run used
    if isinstance(plan, (MaskedTokenPlan, *diffusion.PLANS)):
        return forward_flops(cfg) * (plan.forward_passes() * guidance)
    raise TypeError(f"no FLOPs rule for plan {type(plan).__name__}")
