"""Classifier-free guidance, one definition for every paradigm and family.

A plan's `cfg_scale` is the scale s in uncond + s * (cond - uncond); s = 1 is the conditional
output alone (no null pass). Halton-MaskGIT's w is s - 1: its family passes s = 1 + w. A ramp
grows the guidance term s - 1 with the sampling progress. Conditional and null rows share one
batch laid out [cond, uncond].
"""

from .arrays import MLX


def with_null(labels, null_class: int, xp=MLX):
    """The label batch [labels, null...] that one forward pass evaluates for CFG."""
    return xp.concatenate([labels, xp.full(labels.shape, null_class, dtype=labels.dtype)])


def guide(output, scale: float, xp=MLX):
    """uncond + scale * (cond - uncond) for a batch laid out [cond, uncond]; cond at scale 1."""
    cond, uncond = xp.split(output, 2, axis=0)
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def ramped(scale: float, progress: float) -> float:
    """The scale whose guidance term (s - 1) has grown linearly to `progress` (0..1) of s's."""
    return 1.0 + (scale - 1.0) * progress


def doubled(x, xp=MLX):
    return xp.concatenate([x, x])
