"""Torch versions of the three sampling loops, for the generic plans of `mlx_imgen.paradigms`.

Each `iterate_*` returns a `Sampling`: an iterator that yields after every step, as the MLX
iterators do, and counts in `forward_passes` the model calls it ran (one call evaluates the
conditional and the null batch together under CFG). Random draws come from a torch.Generator
and differ from MLX's; greedy decoding, explicit initial noise and (masked-token) MLX's draws
passed in as `draws` give MLX's results. A plan option the loops do not mirror is refused
unless it is at its default.
"""

import math
from dataclasses import fields
from typing import Callable, Iterator, NamedTuple

import numpy as np

from mlx_imgen.paradigms import FlowPlan, MaskedTokenPlan, NextTokenPlan
from mlx_imgen.paradigms.diffusion import flow_times
from mlx_imgen.paradigms.masked_token import halton_order, revealed_counts

from . import require_torch

torch = require_torch()


class Sampling:
    """Iterates a sampler's steps; `forward_passes` counts the model calls run so far."""

    def __init__(self, model, loop: Callable):
        self.model = model
        self.forward_passes = 0
        self._steps = loop(self._forward)

    def _forward(self, *args, **kwargs):
        self.forward_passes += 1
        return self.model(*args, **kwargs)

    def __iter__(self) -> "Sampling":
        return self

    def __next__(self):
        return next(self._steps)


# ---------------------------------------------------------------- shared helpers

def with_null(labels, null_class: int):
    return torch.cat([labels, torch.full_like(labels, null_class)])


def guide(output, scale: float):
    cond, uncond = output.chunk(2, dim=0)
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def doubled(x):
    return torch.cat([x, x])


def _device(model):
    return model.head.weight.device


def _generator(device, seed: int | None):
    generator = torch.Generator(device=device)
    generator.manual_seed(0 if seed is None else seed)
    return generator


def _labels(labels, device):
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(np.asarray(labels))
    return labels.to(device=device, dtype=torch.long)


def _check_plan(plan, expected: type, mirrored: tuple[str, ...]) -> None:
    """Refuse plan options the torch loops do not mirror (fields added to the MLX plans later)
    unless they are at their defaults."""
    if not isinstance(plan, expected):
        raise TypeError(f"expected a {expected.__name__}, got {type(plan).__name__}")
    names = {field.name for field in fields(plan)}
    plain = type(plan)(**{name: getattr(plan, name) for name in mirrored if name in names})
    for name in names - set(mirrored):
        value = getattr(plan, name)
        if value != getattr(plain, name):
            raise ValueError(f"the torch reference does not mirror {expected.__name__}."
                             f"{name}={value!r}; leave it at its default")


# ---------------------------------------------------------------- next-token

def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
    """Keep the top-k logits, then the smallest set whose probability reaches top_p."""
    neg_inf = torch.tensor(-float("inf"), dtype=logits.dtype, device=logits.device)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.sort(logits, dim=-1).values[..., -top_k][..., None]
        logits = torch.where(logits < kth, neg_inf, logits)
    if top_p < 1.0:
        order = torch.argsort(-logits, dim=-1)
        sorted_logits = torch.gather(logits, -1, order)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = torch.where(drop, neg_inf, logits)
    return logits


def sample_token(logits, plan: NextTokenPlan, generator):
    if plan.temperature == 0:
        return torch.argmax(logits, dim=-1)
    logits = filter_logits(logits.float() / plan.temperature, plan.top_k, plan.top_p)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


def iterate_next_token(model, labels, plan: NextTokenPlan, *, seed: int | None = None) -> Sampling:
    """Yields the sampled token ids (B, 1) after each decoding step, as next_token.iterate."""
    _check_plan(plan, NextTokenPlan, ("num_tokens", "cfg_scale", "temperature", "top_k", "top_p"))
    if plan.num_tokens < 1:
        raise ValueError("the number of tokens must be at least 1")

    def loop(forward) -> Iterator:
        device = _device(model)
        use_cfg = plan.cfg_scale != 1.0
        cond = _labels(labels, device)
        cond = with_null(cond, model.null_class) if use_cfg else cond
        generator = _generator(device, seed)
        with torch.inference_mode():
            cfg = model.config
            cache = model.make_cache(cond.shape[0],
                                     cfg.prefix_tokens + cfg.registers + plan.num_tokens)
            empty = torch.zeros((cond.shape[0], 0), dtype=torch.long, device=device)
            logits = forward(empty, cond, cache=cache)[:, -1]
        for i in range(plan.num_tokens):
            with torch.inference_mode():
                if use_cfg:
                    logits = guide(logits, plan.cfg_scale)
                token = sample_token(logits, plan, generator)[:, None]
                if i + 1 < plan.num_tokens:
                    logits = forward(doubled(token) if use_cfg else token, cache=cache)[:, -1]
            yield token

    return Sampling(model, loop)


# ---------------------------------------------------------------- masked-token

class MaskedStep(NamedTuple):
    tokens: "torch.Tensor"   # (B, N), the mask id where still masked
    fixed: "torch.Tensor"    # (B, k) positions the schedule assigns to this step


def _gumbel(shape, generator, device):
    return -torch.empty(shape, device=device).exponential_(generator=generator).log()


class Draws:
    """The random numbers of one masked-token run, drawn from a torch.Generator; the methods
    are those of `masked_token.Draws`, so an object replaying MLX's draws can stand in."""

    def __init__(self, generator, device):
        self.generator, self.device = generator, device

    def order_shifts(self, batch: int, num_tokens: int):
        return torch.randint(0, num_tokens, (batch,), generator=self.generator, device=self.device)

    def token_noise(self, step: int, shape: tuple):
        return _gumbel(shape, self.generator, self.device)

    def choice_noise(self, step: int, shape: tuple):
        return _gumbel(shape, self.generator, self.device)


def _tensor(value, device):
    value = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
    return value.to(device)


def _scaled_logits(logits, plan: MaskedTokenPlan, i: int):
    """Logits after temperature and top-k, and whether this step samples greedily."""
    t = plan.step_temperature(i)
    if plan.temperature_mode == "divide":
        greedy = t == 0
        scaled = logits if greedy else logits / t
    else:
        greedy = math.isinf(t)
        scaled = logits if greedy else logits * t
    if 0 < plan.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, plan.top_k, dim=-1).values.min(dim=-1, keepdim=True).values
        scaled = torch.where(scaled < kth, -torch.inf, scaled)
    return scaled, greedy


MASKED_OPTIONS = ("num_tokens", "steps", "cfg_scale", "cfg_ramp", "temperature",
                  "temperature_mode", "temperature_warmup", "top_k", "order", "schedule",
                  "schedule_power", "progress", "choice_temperature", "randomize_order",
                  "rewrite_revealed")


def iterate_masked_token(model, labels, plan: MaskedTokenPlan, *, seed: int | None = None,
                         draws=None) -> Sampling:
    """Yields MaskedStep(tokens, fixed) after each step, as masked_token.iterate.

    `draws` (methods order_shifts, token_noise, choice_noise) replaces the generator's noise,
    so that a run can replay MLX's random numbers exactly.
    """
    _check_plan(plan, MaskedTokenPlan, MASKED_OPTIONS)

    def loop(forward) -> Iterator:
        nonlocal draws
        device = _device(model)
        n = plan.num_tokens
        mask_id = model.mask_id
        use_cfg = plan.cfg_scale != 1.0
        given = _labels(labels, device)
        batch = given.shape[0]
        cond = with_null(given, model.null_class) if use_cfg else given
        draws = draws or Draws(_generator(device, seed), device)
        revealed = revealed_counts(plan)
        if plan.order == "halton":
            order = torch.from_numpy(halton_order(math.isqrt(n))).long().to(device)
            shifts = (_tensor(draws.order_shifts(batch, n), device).long()
                      if plan.randomize_order
                      else torch.zeros(batch, dtype=torch.long, device=device))
            positions = torch.arange(n, device=device)
            # rolling the order by k moves each position's rank k places later
            rank = (torch.argsort(order)[None] + shifts[:, None]) % n
            ranked = order[(positions[None] - shifts[:, None]) % n]
        tokens = torch.full((batch, n), mask_id, dtype=torch.long, device=device)
        before = 0
        for i, after in enumerate(revealed):
            with torch.inference_mode():
                logits = forward(doubled(tokens) if use_cfg else tokens, cond)
                if use_cfg:
                    scale = plan.cfg_scale
                    if plan.cfg_ramp:
                        scale = 1.0 + (scale - 1.0) * plan.step_progress(i)
                    logits = guide(logits, scale)
                scaled, greedy = _scaled_logits(logits.float(), plan, i)
                if greedy:
                    sampled = torch.argmax(scaled, dim=-1)
                else:
                    noise = _tensor(draws.token_noise(i, tuple(scaled.shape)), device)
                    sampled = torch.argmax(scaled + noise, dim=-1)
                masked = tokens == mask_id
                if plan.order == "halton":
                    first = 0 if plan.rewrite_revealed else before
                    selected = (rank >= first) & (rank < after)
                else:
                    log_probs = torch.log_softmax(scaled, dim=-1)
                    confidence = torch.gather(log_probs, -1, sampled[..., None])[..., 0]
                    noise_scale = plan.choice_temperature * (1.0 - plan.step_progress(i))
                    if noise_scale > 0:
                        noise = _tensor(draws.choice_noise(i, tuple(confidence.shape)), device)
                        confidence = confidence + noise_scale * noise
                    # revealed positions rank first, so the top `after` hold them and the new
                    confidence = torch.where(masked, confidence, torch.inf)
                    ranked = torch.argsort(-confidence, dim=-1, stable=True)
                    threshold = torch.gather(confidence, -1, ranked[:, after - 1:after])
                    selected = confidence >= threshold
                write = selected if plan.rewrite_revealed else selected & masked
                tokens = torch.where(write, sampled, tokens)
                if i == plan.steps - 1:
                    tokens = torch.where(tokens == mask_id, mask_id - 1, tokens)
                fixed = ranked[:, before:after]
            before = after
            yield MaskedStep(tokens, fixed)

    return Sampling(model, loop)


# ---------------------------------------------------------------- flow matching

def iterate_flow(model, labels, plan: FlowPlan, *, noise=None, seed: int | None = None,
                 latent_shape: tuple[int, int, int] | None = None) -> Sampling:
    """Yields latents (B, H, W, C) after each solver step, as diffusion.iterate.

    `noise` (a torch tensor or an array) gives the start; else it is drawn from `seed`.
    """
    _check_plan(plan, FlowPlan, ("steps", "solver", "shift", "cfg_scale", "time_scale", "t_noise",
                                 "guided_channels"))

    def loop(forward) -> Iterator:
        device = _device(model)
        given = _labels(labels, device)
        use_cfg = plan.cfg_scale != 1.0
        cond = with_null(given, model.null_class) if use_cfg else given
        if noise is None:
            x = torch.randn((given.shape[0], *latent_shape), generator=_generator(device, seed),
                            device=device)
        else:
            x = noise if isinstance(noise, torch.Tensor) else torch.from_numpy(np.array(noise))
            x = x.to(device=device, dtype=torch.float32)
        channels = x.shape[-1]
        guided = plan.guided_channels or channels

        def velocity(x, t: float):
            inputs = doubled(x) if use_cfg else x
            timesteps = torch.full((inputs.shape[0],), t * plan.time_scale, dtype=torch.float32,
                                   device=device)
            out = forward(inputs, cond, timesteps)[..., :channels]
            if not use_cfg:
                return out.to(x.dtype)
            # CFG mixes the leading `guided` channels; the others come from the conditional pass
            mixed = guide(out[..., :guided], plan.cfg_scale)
            if guided < channels:
                mixed = torch.cat([mixed, out[..., guided:].chunk(2, dim=0)[0]], dim=-1)
            return mixed.to(x.dtype)

        times = [float(t) for t in flow_times(plan.steps, plan.shift, plan.t_noise)]
        for t, t_next in zip(times[:-1], times[1:]):
            dt = t_next - t
            with torch.inference_mode():
                v = velocity(x, t)
                if plan.solver == "heun":
                    x_pred = x + dt * v
                    x = x + dt * 0.5 * (v + velocity(x_pred, t_next))
                else:
                    x = x + dt * v
            yield x

    return Sampling(model, loop)


def iterate(model, labels, plan, *, seed: int | None = None, **kwargs) -> Sampling:
    """The torch step iterator of the paradigm that `plan` belongs to."""
    if isinstance(plan, NextTokenPlan):
        return iterate_next_token(model, labels, plan, seed=seed)
    if isinstance(plan, MaskedTokenPlan):
        return iterate_masked_token(model, labels, plan, seed=seed, **kwargs)
    if isinstance(plan, FlowPlan):
        return iterate_flow(model, labels, plan, seed=seed, **kwargs)
    raise TypeError(f"no torch sampler for plan {type(plan).__name__}")


def generate(model, labels, plan, *, seed: int | None = None, **kwargs):
    """Final codes (B, N) or latents (B, H, W, C), and the number of model calls it took."""
    run = iterate(model, labels, plan, seed=seed, **kwargs)
    steps = list(run)
    if isinstance(plan, NextTokenPlan):
        out = torch.cat(steps, dim=1)
    elif isinstance(plan, MaskedTokenPlan):
        out = steps[-1].tokens
    else:
        out = steps[-1]
    return out, run.forward_passes
