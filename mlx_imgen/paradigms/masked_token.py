"""Masked-token (MaskGIT) sampling: start fully masked, fix a scheduled number of tokens a step."""

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import mlx.core as mx
import numpy as np

from .guidance import doubled, guide, with_null


@dataclass
class MaskedTokenPlan:
    num_tokens: int
    steps: int = 16
    cfg_scale: float = 3.0
    temperature: tuple[float, float] = (1.0, 1.0)  # softmax temperature, first and last step
    order: str = "confidence"                       # "confidence" (MaskGIT) | "halton"
    schedule: str = "cosine"                        # one of SCHEDULES
    schedule_power: float = 2.0
    choice_temperature: float = 4.5                 # Gumbel noise on confidences, annealed to 0

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.steps > self.num_tokens:
            raise ValueError(f"steps ({self.steps}) cannot exceed the number of tokens "
                             f"({self.num_tokens}): each step fixes at least one token")
        if self.order not in ("confidence", "halton"):
            raise ValueError(f"unknown order {self.order!r}; use 'confidence' or 'halton'")

    def forward_passes(self) -> int:
        return self.steps


SCHEDULES = ("cosine", "arccos", "linear", "power")


def revealed_fraction(progress: float, schedule: str, power: float = 2.0) -> float:
    """Fraction of tokens fixed once `progress` (0..1) of the steps are done.

    cosine is MaskGIT's mask ratio cos(pi/2 r); arccos is Halton-MaskGIT's.
    """
    if schedule == "cosine":
        return 1.0 - math.cos(math.pi / 2 * progress)
    if schedule == "arccos":
        return 1.0 - math.acos(progress) / (math.pi / 2)
    if schedule == "linear":
        return progress
    if schedule == "power":
        return progress ** power
    raise ValueError(f"unknown mask schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def schedule_counts(num_tokens: int, steps: int, schedule: str = "cosine",
                    power: float = 2.0) -> list[int]:
    """Tokens fixed at each step: at least one each, `num_tokens` in all, following the schedule."""
    done = 0
    counts = []
    for i in range(1, steps + 1):
        fraction = 1.0 if i == steps else revealed_fraction(i / steps, schedule, power)
        target = math.floor(num_tokens * fraction)
        # leave at least one token for every later step, and fix at least one now
        target = min(max(target, done + 1), num_tokens - (steps - i))
        counts.append(target - done)
        done = target
    return counts


def halton_sequence(index: int, base: int) -> float:
    result, fraction = 0.0, 1.0
    while index > 0:
        fraction /= base
        result += fraction * (index % base)
        index //= base
    return result


def halton_order(grid_size: int) -> np.ndarray:
    """Grid cells (row-major ids) in the order the 2-D Halton sequence first visits them.

    Base 2 gives the row and base 3 the column; repeated cells keep their first visit.
    """
    seen, order, index = set(), [], 1  # the sequence starts at its first non-zero point
    while len(order) < grid_size * grid_size:
        row = int(halton_sequence(index, 2) * grid_size)
        col = int(halton_sequence(index, 3) * grid_size)
        cell = row * grid_size + col
        if cell not in seen:
            seen.add(cell)
            order.append(cell)
        index += 1
    return np.array(order, dtype=np.int32)


class MaskedStep(NamedTuple):
    tokens: mx.array      # (B, N), the mask id where still masked
    fixed: mx.array       # (B, k) positions fixed at this step


def _gumbel(shape, key):
    return -mx.log(-mx.log(mx.random.uniform(shape=shape, key=key) + 1e-20) + 1e-20)


def iterate(model, labels: mx.array, plan: MaskedTokenPlan, *, seed: int | None = None,
            key: mx.array | None = None) -> Iterator[MaskedStep]:
    batch, n = labels.shape[0], plan.num_tokens
    mask_id = model.mask_id
    use_cfg = plan.cfg_scale != 1.0
    cond_labels = with_null(labels, model.null_class) if use_cfg else labels
    key = key if key is not None else mx.random.key(0 if seed is None else seed)
    sample_keys = mx.random.split(key, 2 * plan.steps)
    counts = schedule_counts(n, plan.steps, plan.schedule, plan.schedule_power)
    halton = mx.array(halton_order(int(math.isqrt(n)))) if plan.order == "halton" else None
    tokens = mx.full((batch, n), mask_id, dtype=mx.int32)
    done = 0
    for i, count in enumerate(counts):
        logits = model(doubled(tokens) if use_cfg else tokens, cond_labels)
        if use_cfg:
            logits = guide(logits, plan.cfg_scale)
        logits = logits.astype(mx.float32)
        t0, t1 = plan.temperature
        temperature = t0 + (t1 - t0) * (i / max(plan.steps - 1, 1))
        if temperature == 0:
            sampled = mx.argmax(logits, axis=-1)
        else:
            sampled = mx.random.categorical(logits / temperature, axis=-1, key=sample_keys[2 * i])
        sampled = sampled.astype(mx.int32)
        if halton is not None:
            fixed = mx.broadcast_to(halton[done:done + count], (batch, count))
        else:
            log_probs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            confidence = mx.take_along_axis(log_probs, sampled[..., None], axis=-1)[..., 0]
            noise_scale = plan.choice_temperature * (1.0 - (i + 1) / plan.steps)
            if noise_scale > 0:
                confidence = confidence + noise_scale * _gumbel(confidence.shape, sample_keys[2 * i + 1])
            # fixed tokens are never chosen again, so they are never re-masked
            confidence = mx.where(tokens == mask_id, confidence, -mx.inf)
            fixed = mx.argsort(-confidence, axis=-1)[:, :count]
        tokens = mx.put_along_axis(tokens, fixed, mx.take_along_axis(sampled, fixed, axis=-1), axis=-1)
        done += count
        mx.eval(tokens, fixed)
        yield MaskedStep(tokens, fixed)


def generate(model, labels: mx.array, plan: MaskedTokenPlan, *, seed: int | None = None,
             key: mx.array | None = None, on_step=None) -> mx.array:
    """Token ids (B, num_tokens) with every position unmasked after `plan.steps` steps."""
    step = None
    for i, step in enumerate(iterate(model, labels, plan, seed=seed, key=key)):
        if on_step:
            on_step(i + 1, plan.steps)
    return step.tokens
