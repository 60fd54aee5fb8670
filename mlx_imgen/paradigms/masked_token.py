"""Masked-token (MaskGIT) sampling: start fully masked, fix a scheduled number of tokens a step.

Two orders decide which positions a step reveals, each a strategy in ORDER_STRATEGIES:
"confidence" (MaskGIT: the most confident samples, with annealed Gumbel noise) and "halton" (a
fixed low-discrepancy order over the grid, Halton-MaskGIT). The defaults are the controlled
grid's; the other options express the published samplers' exact conventions without the
sampler knowing which model it drives. The condition is an object that gives the model's
keyword arguments: ClassLabels (a bare label array means them) or CrossAttentionText.
"""

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import mlx.core as mx
import numpy as np

from .arrays import MLX
# The condition classes live in conditions.py, which the diffusion samplers share; they stay
# importable from here.
from .conditions import CONDITIONS, ClassLabels, CrossAttentionText, as_condition  # noqa: F401
from .guidance import doubled, guide, ramped
from .keys import image_keys, per_image, split_each

ORDERS = ("confidence", "halton")  # the keys of ORDER_STRATEGIES
SCHEDULES = ("cosine", "arccos", "linear", "power")
PROGRESS = ("after", "linspace")
COUNTS = ("revealed", "masked")
MASKED_SCHEDULES = ("cosine", "linear")  # those of the "masked" count (AmusedScheduler's)
TEMPERATURE_MODES = ("divide", "multiply")
PARADIGM = "masked-token"


@dataclass
class MaskedTokenPlan:
    num_tokens: int
    steps: int = 16
    cfg_scale: float = 3.0             # s in uncond + s * (cond - uncond) (guidance.py); 1: off
    cfg_ramp: bool = False             # the term s - 1 grows linearly from 0 (progress 0) to s - 1
    temperature: tuple[float, float] = (1.0, 1.0)  # first and last step (or one value)
    temperature_mode: str = "divide"   # logits / T (0 is greedy) or logits * T (inf is greedy)
    temperature_warmup: int = 0        # this many first steps use half the temperature value
    top_k: int = 0                     # sample among the k most likely ids; 0 keeps all
    order: str = "confidence"          # one of ORDERS
    schedule: str = "cosine"           # one of SCHEDULES
    schedule_power: float = 2.0
    # Where step i sits on the schedule: "after" is (i+1)/steps, the share of steps done when
    # it ends; "linspace" is i/(steps-1), starting at 0. The Gumbel annealing and the guidance
    # ramp follow the same progress.
    progress: str = "after"
    choice_temperature: float = 4.5    # Gumbel noise on log-confidences, annealed to 0
    randomize_order: bool = False      # halton: roll each sample's order by a random offset
    # Write the step's fresh sample over already revealed positions too (among those the step
    # selects) instead of keeping them; some published samplers do.
    rewrite_revealed: bool = False
    # Passed to the model as `micro_conditions` (one row per batch row) where set: aMUSEd's
    # (width, height, crop top, crop left, aesthetic score).
    micro_conditions: tuple[float, ...] | None = None
    # How a step's count is rounded: "revealed" floors the revealed tokens (revealed_counts);
    # "masked" floors the tokens left masked in float32, as MaskGIT and aMUSEd do (masked_counts).
    count: str = "revealed"
    # The progress the choice noise anneals over; None: `progress`. aMUSEd anneals it over
    # "linspace" while its counts follow "after".
    choice_progress: str | None = None

    def __post_init__(self):
        if isinstance(self.temperature, (int, float)):
            self.temperature = (float(self.temperature), float(self.temperature))
        self.temperature = tuple(float(t) for t in self.temperature)
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.steps > self.num_tokens:
            raise ValueError(f"steps ({self.steps}) cannot exceed the number of tokens "
                             f"({self.num_tokens}): each step fixes at least one token")
        if self.micro_conditions is not None:
            self.micro_conditions = tuple(float(v) for v in self.micro_conditions)
        for name, value, known in (("order", self.order, ORDERS),
                                   ("schedule", self.schedule, SCHEDULES),
                                   ("progress", self.progress, PROGRESS),
                                   ("choice_progress", self.choice_progress or self.progress,
                                    PROGRESS),
                                   ("count", self.count, COUNTS),
                                   ("temperature_mode", self.temperature_mode, TEMPERATURE_MODES)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(known)}")
        if self.count == "masked" and self.schedule not in MASKED_SCHEDULES:
            raise ValueError(f"the masked count follows the {' or '.join(MASKED_SCHEDULES)} "
                             f"schedule, not {self.schedule!r}")
        if len(self.temperature) != 2:
            raise ValueError(f"temperature is one value or a (first, last) pair, got "
                             f"{self.temperature}")
        if self.temperature_mode == "multiply" and min(self.temperature) <= 0:
            raise ValueError(f"a temperature that multiplies the logits must be positive (larger "
                             f"is sharper), got {self.temperature}")
        if min(self.temperature) < 0:
            raise ValueError(f"temperature must not be negative, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be 0 (all) or positive, got {self.top_k}")
        if self.temperature_warmup < 0:
            raise ValueError(f"temperature warm-up must be 0 or more steps, got "
                             f"{self.temperature_warmup}")
        if self.order == "halton" and math.isqrt(self.num_tokens) ** 2 != self.num_tokens:
            raise ValueError(f"the Halton order needs a square token grid, not {self.num_tokens} "
                             "tokens")
        if self.randomize_order and self.order != "halton":
            raise ValueError("randomize_order rolls the Halton order; use it with order 'halton'")

    def forward_passes(self) -> int:
        return self.steps

    def step_progress(self, i: int, progress: str | None = None) -> float:
        """Where step i sits on the schedule, by `progress` (None: the plan's)."""
        numerator, denominator = _progress_ratio(i, self.steps, progress or self.progress)
        return numerator / denominator

    def choice_step_progress(self, i: int) -> float:
        return self.step_progress(i, self.choice_progress)

    def step_temperature(self, i: int) -> float:
        t0, t1 = self.temperature
        t = t0 + (t1 - t0) * (i / max(self.steps - 1, 1))
        return t * 0.5 if i < self.temperature_warmup else t


def _progress_ratio(i: int, steps: int, progress: str) -> tuple[int, int]:
    if progress == "after":
        return i + 1, steps
    return (i, steps - 1) if steps > 1 else (1, 1)


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


def masked_counts(plan: MaskedTokenPlan) -> list[int]:
    """Tokens still masked once each step ends, as AmusedScheduler (and MaskGIT) count them:
    floor(N * mask ratio) with every operation in float32 (torch's: the ratio, its product with
    float32 pi, the cosine, the product with N), at most one fewer than were masked before and
    at least one, until the last step reveals the rest. (With no more steps than tokens,
    which plans require, every step reveals at least one.)"""
    n, steps = plan.num_tokens, plan.steps
    masked, out = n, []
    for i in range(steps):
        if i == steps - 1:
            masked = 0
        else:
            numerator, denominator = _progress_ratio(i, steps, plan.progress)
            ratio = np.float32(numerator) / np.float32(denominator)
            if plan.schedule == "cosine":
                mask_ratio = np.cos(ratio * np.float32(math.pi) / np.float32(2))
            else:
                mask_ratio = np.float32(1) - ratio
            floor = int(np.floor(np.float32(n) * mask_ratio))
            masked = max(1, min(masked - 1, floor))
        out.append(masked)
    return out


def revealed_counts(plan: MaskedTokenPlan) -> list[int]:
    """Tokens revealed in all once each step ends (cumulative; the last is num_tokens).

    With the plan's count "revealed": floor(N * schedule), at least one more each step and one
    left for each later step. For the convex schedules here this equals Halton-MaskGIT's
    max(i + 1, floor(N * schedule)). With "masked": N less `masked_counts`.
    """
    n, steps = plan.num_tokens, plan.steps
    if plan.count == "masked":
        return [n - masked for masked in masked_counts(plan)]
    done, revealed = 0, []
    for i in range(steps):
        fraction = revealed_fraction(plan.step_progress(i), plan.schedule, plan.schedule_power)
        target = math.floor(n * fraction)
        if i == steps - 1:
            target = n
        else:
            target = min(max(target, done + 1), n - (steps - 1 - i))
        revealed.append(target)
        done = target
    return revealed


def schedule_counts(num_tokens: int, steps: int, schedule: str = "cosine",
                    power: float = 2.0) -> list[int]:
    """Tokens fixed at each step: at least one each, `num_tokens` in all, following the schedule."""
    plan = MaskedTokenPlan(num_tokens=num_tokens, steps=steps, schedule=schedule,
                           schedule_power=power)
    revealed = revealed_counts(plan)
    return [b - a for a, b in zip([0] + revealed[:-1], revealed)]


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


class Draws:
    """Every random number one sampling run uses, each image's from its own key.

    Sampling is Gumbel-max: the sampled id is argmax(scaled logits + token_noise), which draws
    from softmax(scaled logits). Keeping the noise explicit lets a reference implementation
    replay a run exactly; pass an object with the same methods to `iterate` to inject noise.
    `keys` (B, 2) are the images' keys (`keys.image_keys`); each splits into 2 * steps + 1:
    step i's token and choice noise, and the order's roll last.
    """

    def __init__(self, keys: mx.array, steps: int):
        if keys.ndim != 2:
            raise ValueError(f"Draws take one key per image (B, 2), not an array of shape "
                             f"{tuple(keys.shape)}; make them with keys.image_keys")
        self._keys = split_each(keys, 2 * steps + 1)

    def _check(self, batch: int) -> None:
        if batch != self._keys.shape[0]:
            raise ValueError(f"these draws hold keys for {self._keys.shape[0]} images, not "
                             f"{batch}")

    def order_shifts(self, batch: int, num_tokens: int) -> mx.array:
        """(B,) offsets in 0..num_tokens-1 by which each sample's order is rolled."""
        self._check(batch)
        return per_image(lambda shape, key: mx.random.randint(0, num_tokens, shape, key=key),
                         self._keys[:, -1], ())

    def token_noise(self, step: int, shape: tuple) -> mx.array:
        """Gumbel noise (B, N, V) for sampling the ids at a step."""
        self._check(shape[0])
        return per_image(mx.random.gumbel, self._keys[:, 2 * step], shape[1:])

    def choice_noise(self, step: int, shape: tuple) -> mx.array:
        """Gumbel noise (B, N) on the confidences that choose the positions to reveal."""
        self._check(shape[0])
        return per_image(mx.random.gumbel, self._keys[:, 2 * step + 1], shape[1:])


class MaskedStep(NamedTuple):
    tokens: mx.array      # (B, N), the mask id where still masked
    fixed: mx.array       # (B, k) positions the schedule assigns to this step


def _top_k(logits, k: int, xp=MLX):
    if not 0 < k < logits.shape[-1]:
        return logits
    kth = xp.min(xp.topk(logits, k, axis=-1), axis=-1, keepdims=True)
    return xp.where(logits < kth, -xp.inf, logits)


def tempered(logits, plan: MaskedTokenPlan, i: int):
    """Logits after step i's temperature, and whether the step samples greedily."""
    t = plan.step_temperature(i)
    if plan.temperature_mode == "divide":
        greedy = t == 0
        return (logits if greedy else logits / t), greedy
    greedy = math.isinf(t)
    return (logits if greedy else logits * t), greedy


# ---------------------------------------------------------------- orders
# An order decides which positions step i writes: `select` returns the (B, N) positions to
# write (the revealed ones too where the plan rewrites them) and the (B, k) positions this
# step assigns, those of ranks before..after-1.

def sampled_log_prob(scaled, sampled, xp=MLX):
    """log softmax(scaled)[sampled] (B, N): the sampled id's logit less the logsumexp, the same
    subtraction as the full log-probabilities without writing them over the vocabulary."""
    chosen = xp.take_along_axis(scaled, sampled[..., None], axis=-1)
    return (chosen - xp.logsumexp(scaled, axis=-1, keepdims=True))[..., 0]


class ConfidenceOrder:
    """MaskGIT's: the most confident of the step's samples, Gumbel noise on the
    log-confidences annealed to 0 over the steps."""

    def __init__(self, plan: MaskedTokenPlan, draws, batch: int, xp=MLX):
        self.plan, self.draws, self.xp = plan, draws, xp

    def select(self, i: int, before: int, after: int, scaled, sampled, masked):
        xp, plan = self.xp, self.plan
        confidence = sampled_log_prob(scaled, sampled, xp)
        noise_scale = plan.choice_temperature * (1.0 - plan.choice_step_progress(i))
        if noise_scale > 0:
            confidence = confidence + noise_scale * self.draws.choice_noise(i, confidence.shape)
        # revealed positions rank first, so the top `after` hold them and the newly chosen
        confidence = xp.where(masked, confidence, xp.inf)
        ranked = xp.argsort(-confidence, axis=-1)
        threshold = xp.take_along_axis(confidence, ranked[:, after - 1:after], axis=-1)
        return confidence >= threshold, ranked[:, before:after]


class HaltonOrder:
    """Halton-MaskGIT's: a fixed low-discrepancy order over the grid, each image's rolled by a
    random offset where the plan says so."""

    def __init__(self, plan: MaskedTokenPlan, draws, batch: int, xp=MLX):
        n = plan.num_tokens
        order = xp.asarray(halton_order(math.isqrt(n)))
        shifts = (draws.order_shifts(batch, n) if plan.randomize_order
                  else xp.zeros((batch,), dtype=xp.ids))
        # rolling the order by k moves each position's rank k places later
        self.rank = (xp.argsort(order, axis=-1)[None] + shifts[:, None]) % n
        self.ranked = xp.take(order, (xp.arange(n)[None] - shifts[:, None]) % n)
        self.rewrite = plan.rewrite_revealed

    def select(self, i: int, before: int, after: int, scaled, sampled, masked):
        # this step's slice of the order, or with rewriting every position up to its end
        first = 0 if self.rewrite else before
        return (self.rank >= first) & (self.rank < after), self.ranked[:, before:after]


ORDER_STRATEGIES = {"confidence": ConfidenceOrder, "halton": HaltonOrder}


def unmask(model, condition, plan: MaskedTokenPlan, draws, xp=MLX) -> Iterator[MaskedStep]:
    """The sampling loop in the namespace `xp`: one MaskedStep a step (see `iterate`).
    `condition` is ClassLabels, CrossAttentionText or class labels: it gives the model's
    keyword arguments, and the loop knows nothing of the family."""
    condition = as_condition(condition)
    batch, n = condition.batch, plan.num_tokens
    mask_id = model.mask_id
    use_cfg = plan.cfg_scale != 1.0
    arguments = condition.arguments(model, use_cfg, xp)
    if plan.micro_conditions is not None:
        rows = 2 * batch if use_cfg else batch
        arguments["micro_conditions"] = xp.asarray(
            np.tile(np.asarray(plan.micro_conditions, dtype=np.float32), (rows, 1)))
    order = ORDER_STRATEGIES[plan.order](plan, draws, batch, xp)
    tokens = xp.full((batch, n), mask_id, dtype=xp.ids)
    before = 0
    for i, after in enumerate(revealed_counts(plan)):
        logits = model(doubled(tokens, xp) if use_cfg else tokens, **arguments)
        if use_cfg:
            scale = ramped(plan.cfg_scale, plan.step_progress(i)) if plan.cfg_ramp \
                else plan.cfg_scale
            logits = guide(logits, scale, xp)
        scaled, greedy = tempered(xp.astype(logits, xp.float32), plan, i)
        scaled = _top_k(scaled, plan.top_k, xp)
        if greedy:
            sampled = xp.argmax(scaled, axis=-1)
        else:
            sampled = xp.argmax(scaled + draws.token_noise(i, scaled.shape), axis=-1)
        sampled = xp.astype(sampled, xp.ids)
        masked = tokens == mask_id
        selected, fixed = order.select(i, before, after, scaled, sampled, masked)
        write = selected if plan.rewrite_revealed else selected & masked
        tokens = xp.where(write, sampled, tokens)
        if i == plan.steps - 1:
            tokens = xp.where(tokens == mask_id, mask_id - 1, tokens)
        before = after
        xp.eval(tokens, fixed)
        yield MaskedStep(tokens, fixed)


def iterate(model, labels, plan: MaskedTokenPlan, *, seed: int | None = None,
            key: mx.array | None = None, first_index: int = 0,
            draws=None) -> Iterator[MaskedStep]:
    """One MaskedStep a step. A model that scores the mask id can sample it, which leaves the
    position masked; after the last step such a position gets the last code, so that every id
    decodes (Halton-MaskGIT clamps the same way).

    `labels` is a condition (ClassLabels, CrossAttentionText) or class labels, for images
    `first_index`, ... of a run; `Draws` of their keys
    (`keys.image_keys` of `seed` or `key`, or `key` (B, 2) itself) give every random number,
    so an image does not depend on the batch it is sampled in. `draws` replaces them."""
    if draws is None:
        draws = Draws(image_keys(as_condition(labels).batch, seed=seed, key=key,
                                 first=first_index), plan.steps)
    return unmask(model, labels, plan, draws)


def generate(model, labels, plan: MaskedTokenPlan, *, seed: int | None = None,
             key: mx.array | None = None, first_index: int = 0, on_step=None,
             draws=None) -> mx.array:
    """Token ids (B, num_tokens) with every position unmasked after `plan.steps` steps;
    randomness as in `iterate`."""
    step = None
    for i, step in enumerate(iterate(model, labels, plan, seed=seed, key=key,
                                     first_index=first_index, draws=draws)):
        if on_step:
            on_step(i + 1, plan.steps)
    return step.tokens
