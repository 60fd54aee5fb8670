"""Classifier-free guidance shared by the three paradigms: conditional and null in one batch."""

import mlx.core as mx


def with_null(labels: mx.array, null_class: int) -> mx.array:
    """The label batch [labels, null...] that one forward pass evaluates for CFG."""
    return mx.concatenate([labels, mx.full(labels.shape, null_class, dtype=labels.dtype)])


def guide(output: mx.array, scale: float) -> mx.array:
    """uncond + scale * (cond - uncond) for a batch laid out [cond, uncond]; cond at scale 1."""
    cond, uncond = mx.split(output, 2, axis=0)
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def doubled(x: mx.array) -> mx.array:
    return mx.concatenate([x, x])
