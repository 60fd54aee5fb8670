"""Torch versions of the sampling loops, for every plan of `mlx_imgen.paradigms`.

Each `iterate_*` returns a `Sampling`: an iterator that yields after every step, as the MLX
iterators do, and counts in `forward_passes` the model calls it ran (one call evaluates the
conditional and the null batch together under CFG). Random draws come from a torch.Generator
and differ from MLX's; greedy decoding, explicit initial noise and MLX's draws passed in
(next-token `token_noise`, see `replay_mlx_token_noise`; masked-token `draws`; diffusion
`step_noise`, see `replay_mlx_noise`) give MLX's results. A
plan option the loops do not mirror is refused unless it is at its default.
"""

import math
from dataclasses import fields
from typing import Callable, Iterator, NamedTuple

import numpy as np

from mlx_imgen.paradigms import (Dopri5Plan, FlowPlan, GaussianPlan, MaskedTokenPlan,
                                 NextTokenPlan, SDEPlan)
from mlx_imgen.paradigms.diffusion import (DP_ERROR, DP_MID, DP_TIMES, DP_WEIGHTS,
                                           GaussianSchedule, _combine, _initial_step,
                                           _next_step, ddim_step, ddpm_step,
                                           Noise, diffusion_coefficient, flow_times,
                                           random_steps, sde_times)
from mlx_imgen.paradigms.masked_token import halton_order, revealed_counts, tempered

from . import require_torch

torch = require_torch()


class Sampling:
    """Iterates a sampler's steps; `forward_passes` counts the model calls run so far and, for
    the adaptive dopri5, `steps_taken` its accepted and rejected steps."""

    def __init__(self, model, loop: Callable):
        self.model = model
        self.forward_passes = 0
        self.steps_taken: int | None = None
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


def sample_token(logits, plan: NextTokenPlan, generator, noise=None):
    """A token per row; with `noise` (B, V), Gumbel-max as the MLX sampler draws."""
    if plan.temperature == 0:
        return torch.argmax(logits, dim=-1)
    logits = filter_logits(logits.float() / plan.temperature, plan.top_k, plan.top_p)
    if noise is not None:
        return torch.argmax(logits + noise, dim=-1)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


def replay_mlx_token_noise(plan: NextTokenPlan, seed: int | None, batch: int, vocab_size: int,
                           first_index: int = 0):
    """`token_noise(i)`: the Gumbel noise (B, V) that MLX's next-token sampler adds for token
    i of images `first_index`, ... of the run with `seed`, as a torch tensor."""
    from mlx_imgen.paradigms.keys import image_keys, split_each
    from mlx_imgen.paradigms.next_token import token_noise as mlx_token_noise

    from . import to_torch
    keys = split_each(image_keys(batch, seed=seed, first=first_index), plan.num_tokens)
    return lambda i: to_torch(mlx_token_noise(keys[:, i], vocab_size))


def iterate_next_token(model, labels, plan: NextTokenPlan, *, seed: int | None = None,
                       token_noise: Callable | None = None) -> Sampling:
    """Yields the sampled token ids (B, 1) after each decoding step, as next_token.iterate.
    `token_noise(i)` (see `replay_mlx_token_noise`) replaces the generator's draw of token i."""
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
                noise = None if token_noise is None else _tensor(token_noise(i), device)
                token = sample_token(logits, plan, generator, noise)[:, None]
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
    scaled, greedy = tempered(logits, plan, i)
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


# ---------------------------------------------------------------- diffusion: shared

StepNoise = Callable[[int, tuple], object]  # (step index, shape) -> a tensor or an array


def guided_prediction(forward, cond, cfg_scale: float, time_scale: float = 1.0,
                      keep_channels: int | None = None, guided_channels: int | None = None, *,
                      upstream_batch: bool = False):
    """diffusion.guided_prediction in torch: `cond` already holds the null labels under CFG.

    CFG mixes the leading `guided_channels`; the other kept channels come from the
    conditional pass, or with `upstream_batch` (x = [x, x'], dopri5's state) the conditional
    pass in the first half and the unconditional one in the second.
    """
    use_cfg = cfg_scale != 1.0

    def predict(x, t: float):
        first = x[: x.shape[0] // 2] if upstream_batch else x
        inputs = doubled(first) if use_cfg else first
        timesteps = torch.full((inputs.shape[0],), t * time_scale, dtype=torch.float32,
                               device=x.device)
        out = forward(inputs, cond, timesteps)[..., :keep_channels or x.shape[-1]]
        if not use_cfg:
            return out.to(x.dtype)
        g = guided_channels or x.shape[-1]
        mixed = guide(out[..., :g], cfg_scale)
        if g >= out.shape[-1]:
            return (doubled(mixed) if upstream_batch else mixed).to(x.dtype)
        cond_rest, uncond_rest = out[..., g:].chunk(2, dim=0)
        result = torch.cat([mixed, cond_rest], dim=-1)
        if upstream_batch:
            result = torch.cat([result, torch.cat([mixed, uncond_rest], dim=-1)])
        return result.to(x.dtype)

    return predict


class _Start(NamedTuple):
    cond: "torch.Tensor"       # labels, with the null labels appended under CFG
    x: "torch.Tensor"          # the initial latents (B, H, W, C), float32
    draw: Callable             # (step index, shape) -> that step's standard normal noise


def _start(model, labels, cfg_scale: float, noise, seed, latent_shape, step_noise) -> _Start:
    """Labels, initial latents and step noise of a diffusion run. Without `noise` the start is
    drawn from a generator seeded with `seed`; without `step_noise` so are the steps'."""
    device = _device(model)
    given = _labels(labels, device)
    cond = with_null(given, model.null_class) if cfg_scale != 1.0 else given
    generator = _generator(device, seed)
    if noise is None:
        if latent_shape is None:
            raise ValueError("pass the initial noise or the latent shape to draw it in")
        x = torch.randn((given.shape[0], *latent_shape), generator=generator, device=device)
    else:
        x = _tensor(noise, device).to(torch.float32)
        if x.shape[0] != given.shape[0]:
            raise ValueError(f"the noise holds {x.shape[0]} latents for {given.shape[0]} labels")

    def draw(i: int, shape: tuple):
        if step_noise is None:
            return torch.randn(shape, generator=generator, device=device)
        value = step_noise(i, shape) if callable(step_noise) else step_noise[i]
        value = _tensor(value, device).to(torch.float32)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"step {i}'s noise has shape {tuple(value.shape)}, the latents "
                             f"{tuple(shape)}")
        return value

    return _Start(cond, x, draw)


def replay_mlx_noise(plan, seed: int | None, shape: tuple, first_index: int = 0):
    """The initial noise and the step noise that MLX's diffusion sampler draws for `seed` and
    latents of `shape` (B, H, W, C), the batch being images `first_index`, ... of the run (see
    `diffusion.Noise`), as torch tensors: passed as `noise=` and `step_noise=`, they make a
    torch run replay that MLX run's random numbers."""
    from mlx_imgen.paradigms.keys import image_keys

    from . import to_torch
    draws = Noise(image_keys(shape[0], seed=seed, first=first_index), random_steps(plan))
    initial = to_torch(draws.start(shape[1:]))

    def step_noise(i: int, step_shape: tuple):
        return to_torch(draws.step(i, step_shape))

    return initial, step_noise


# ---------------------------------------------------------------- flow matching

def iterate_flow(model, labels, plan: FlowPlan, *, noise=None, seed: int | None = None,
                 latent_shape: tuple[int, int, int] | None = None) -> Sampling:
    """Yields latents (B, H, W, C) after each solver step, as diffusion.iterate.

    `noise` (a torch tensor or an array) gives the start; else it is drawn from `seed`.
    """
    _check_plan(plan, FlowPlan, ("steps", "solver", "shift", "cfg_scale", "time_scale", "t_noise",
                                 "guided_channels"))

    def loop(forward) -> Iterator:
        start = _start(model, labels, plan.cfg_scale, noise, seed, latent_shape, None)
        x = start.x
        velocity = guided_prediction(forward, start.cond, plan.cfg_scale, plan.time_scale,
                                     x.shape[-1], plan.guided_channels)
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


# ---------------------------------------------------------------- adaptive Dormand-Prince 5(4)

def _rms(x) -> float:
    return float(torch.sqrt(torch.mean(torch.square(x.to(torch.float32)))))


def _interpolate(y0, y1, mid, f0, f1, dt: float, x: float):
    a = 2 * dt * (f1 - f0) - 8 * (y1 + y0) + 16 * mid
    b = dt * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * mid
    c = dt * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * mid
    d = dt * f0
    return y0 + x * (d + x * (c + x * (b + x * a)))


def dopri5(f, y, t0: float = 0.0, t1: float = 1.0, *, atol: float = 1e-6, rtol: float = 1e-3,
           max_steps: int = 1000, stats: dict | None = None) -> Iterator:
    """diffusion.dopri5 in torch, with its tableau and step-size control: yields (y, t) after
    each accepted step, the last one y(t1) from the dense output; `stats` gets "steps"
    (accepted and rejected) and "evals" (calls of f)."""
    stats = {} if stats is None else stats
    stats.update(steps=0, evals=0)

    def call(state, t):
        stats["evals"] += 1
        return f(state, t)

    with torch.inference_mode():
        k1 = call(y, t0)
        dt = _initial_step(call, y, k1, t0, atol, rtol, rms=_rms)
    t = t0
    while True:
        if stats["steps"] >= max_steps:
            raise ValueError(f"dopri5 took {max_steps} steps without reaching t={t1} (at "
                             f"t={t:.4f}); raise max_steps or loosen atol/rtol")
        with torch.inference_mode():
            ks = [k1]
            for c, weights in zip(DP_TIMES, DP_WEIGHTS):
                stage = _combine(y, dt, weights, ks)
                ks.append(call(stage, t + dt if c == 1.0 else t + c * dt))
            y_next, k7 = stage, ks[-1]
            error = _combine(torch.zeros_like(y), dt, DP_ERROR, ks)
            tolerance = atol + rtol * torch.maximum(torch.abs(y), torch.abs(y_next))
            ratio = _rms(error / tolerance)
            stats["steps"] += 1
            last = ratio <= 1 and t + dt >= t1
            if last:
                mid = _combine(y, dt, DP_MID, ks)
                final = _interpolate(y, y_next, mid, k1, k7, dt, (t1 - t) / dt)
        if last:
            yield final, t1
            return
        if ratio <= 1:
            y, k1, t = y_next, k7, t + dt
            yield y, t
        dt = _next_step(dt, ratio)


DOPRI5_OPTIONS = ("cfg_scale", "atol", "rtol", "max_steps", "time_scale", "t_noise",
                  "guided_channels", "steps_taken", "passes_used")


def iterate_dopri5(model, labels, plan: Dopri5Plan, *, noise=None, seed: int | None = None,
                   latent_shape: tuple[int, int, int] | None = None) -> Sampling:
    """Yields latents (B, H, W, C) after each accepted step, as diffusion.iterate, with the
    plan's tolerances. The plan is left as it is: the run counts its own model calls in
    `forward_passes` and its accepted and rejected steps in `steps_taken`. Under CFG the
    solver's state is [x, x'] as upstream SiT's, so the error norm spans both halves."""
    _check_plan(plan, Dopri5Plan, DOPRI5_OPTIONS)

    def loop(forward) -> Iterator:
        start = _start(model, labels, plan.cfg_scale, noise, seed, latent_shape, None)
        batch, mirror = start.x.shape[0], plan.cfg_scale != 1.0
        predict = guided_prediction(forward, start.cond, plan.cfg_scale, plan.time_scale,
                                    start.x.shape[-1], plan.guided_channels,
                                    upstream_batch=mirror)
        if plan.t_noise == 0.0:
            f = predict
        else:  # integrate s = 1 - t upwards, so the solver always moves forward in time
            def f(y, s):
                return -predict(y, 1.0 - s)
        stats = {}
        for y, _ in dopri5(f, doubled(start.x) if mirror else start.x, 0.0, 1.0,
                           atol=plan.atol, rtol=plan.rtol, max_steps=plan.max_steps,
                           stats=stats):
            run.steps_taken = stats["steps"]
            yield y[:batch]
        run.steps_taken = stats["steps"]

    run = Sampling(model, loop)
    return run


# ---------------------------------------------------------------- SDE on the linear interpolant

SDE_OPTIONS = ("steps", "cfg_scale", "diffusion", "diffusion_norm", "last_step", "time_scale",
               "guided_channels")


def iterate_sde(model, labels, plan: SDEPlan, *, noise=None, seed: int | None = None,
                latent_shape: tuple[int, int, int] | None = None,
                step_noise: StepNoise | None = None) -> Sampling:
    """Yields latents after each Euler-Maruyama step and after the deterministic last step,
    as diffusion.iterate. `step_noise(i, shape)` (or a sequence) gives step i's standard
    normal draw, e.g. MLX's from `replay_mlx_noise`; else the generator of `seed` draws it."""
    _check_plan(plan, SDEPlan, SDE_OPTIONS)

    def loop(forward) -> Iterator:
        start = _start(model, labels, plan.cfg_scale, noise, seed, latent_shape, step_noise)
        x = start.x
        velocity = guided_prediction(forward, start.cond, plan.cfg_scale, plan.time_scale,
                                     x.shape[-1], plan.guided_channels)

        def drift(x, t: float):
            v = velocity(x, t)
            w = diffusion_coefficient(plan.diffusion, t, plan.diffusion_norm)
            # the linear path's score from its velocity: (t v - x) / (1 - t)
            return v + w * ((t * v - x) / (1 - t)), w

        times = [float(t) for t in sde_times(plan.steps, plan.last_step)]
        dt = times[1] - times[0] if len(times) > 1 else 0.0
        for i, t in enumerate(times[:-1]):
            with torch.inference_mode():
                b, w = drift(x, t)
                dw = start.draw(i, tuple(x.shape)) * math.sqrt(dt)
                x = x + b * dt + math.sqrt(2 * w) * dw
            yield x
        with torch.inference_mode():
            b, _ = drift(x, 1.0 - plan.last_step)
            x = x + b * plan.last_step
        yield x

    return Sampling(model, loop)


# ---------------------------------------------------------------- discrete Gaussian diffusion

GAUSSIAN_OPTIONS = ("steps", "sampler", "cfg_scale", "eta", "variance", "guided_channels",
                    "train_steps")


def iterate_gaussian(model, labels, plan: GaussianPlan, *, noise=None, seed: int | None = None,
                     latent_shape: tuple[int, int, int] | None = None,
                     step_noise: StepNoise | None = None) -> Sampling:
    """Yields latents after each DDPM or DDIM step on the respaced timesteps, as
    diffusion.iterate; the model sees the original integer timesteps. Step i's noise (where
    the sampler adds any) comes from `step_noise(i, shape)`, as in `iterate_sde`."""
    _check_plan(plan, GaussianPlan, GAUSSIAN_OPTIONS)

    def loop(forward) -> Iterator:
        start = _start(model, labels, plan.cfg_scale, noise, seed, latent_shape, step_noise)
        x = start.x
        schedule = GaussianSchedule(plan.train_steps, plan.steps)
        c = x.shape[-1]
        learned = plan.variance == "learned-range"
        predict = guided_prediction(forward, start.cond, plan.cfg_scale, 1.0,
                                    2 * c if learned else c, plan.guided_channels)
        stochastic = plan.sampler == "ddpm" or plan.eta > 0
        for i, j in enumerate(reversed(range(len(schedule)))):
            with torch.inference_mode():
                out = predict(x, float(schedule.timesteps[j]))
                if learned and out.shape[-1] < 2 * c:
                    raise ValueError(f"a learned-range variance needs {2 * c} output channels; "
                                     f"the model gives {out.shape[-1]}")
                step = start.draw(i, tuple(x.shape)) if stochastic and j > 0 else None
                if plan.sampler == "ddpm":
                    x = ddpm_step(schedule, j, x, out, step, plan.variance)
                else:
                    x = ddim_step(schedule, j, x, out, step, plan.eta)
            yield x

    return Sampling(model, loop)


DIFFUSION_LOOPS = {FlowPlan: iterate_flow, Dopri5Plan: iterate_dopri5, SDEPlan: iterate_sde,
                   GaussianPlan: iterate_gaussian}


def iterate(model, labels, plan, *, seed: int | None = None, **kwargs) -> Sampling:
    """The torch step iterator of the paradigm that `plan` belongs to."""
    if isinstance(plan, NextTokenPlan):
        return iterate_next_token(model, labels, plan, seed=seed, **kwargs)
    if isinstance(plan, MaskedTokenPlan):
        return iterate_masked_token(model, labels, plan, seed=seed, **kwargs)
    for plan_type, loop in DIFFUSION_LOOPS.items():
        if isinstance(plan, plan_type):
            return loop(model, labels, plan, seed=seed, **kwargs)
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
