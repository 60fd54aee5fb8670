"""Diffusion sampling, written against the backbone interface and knowing nothing of a family.

Four plans, one per way of turning model predictions into latents:
- `FlowPlan`: fixed Euler or Heun steps along a velocity field;
- `Dopri5Plan`: the same ODE with adaptive Dormand-Prince 5(4) steps (torchdiffeq's control);
- `SDEPlan`: Euler-Maruyama on the linear interpolant, its drift built from the velocity;
- `GaussianPlan`: discrete-time DDPM with an epsilon model, ancestral or DDIM steps on respaced
  timesteps, with a learned-range or fixed variance.

Time conventions. The rectified flow has x_t = (1 - t) * data + t * noise and integrates from
t = 1 (noise) to 0 (data). `t_noise=0` selects the linear interpolant of SiT instead,
x_t = t * data + (1 - t) * noise, integrated from t = 0 to 1; the SDE always uses that one.
The family's plan decides what the model sees (`time_scale`) and which channels CFG mixes.
"""

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import mlx.core as mx
import numpy as np

from .guidance import doubled, guide, with_null
from .keys import image_keys, per_image, split_each

Predict = Callable[[mx.array, float], mx.array]
Velocity = Predict


@dataclass
class FlowPlan:
    steps: int = 50
    solver: str = "euler"        # "euler" | "heun"
    shift: float = 1.0           # time shift: t -> shift * t / (1 + (shift - 1) * t)
    cfg_scale: float = 4.0
    time_scale: float = 1000.0   # the model sees t * time_scale
    t_noise: float = 1.0         # where the path is pure noise: 1 (rectified flow) or 0 (SiT)
    guided_channels: int | None = None  # CFG mixes only these leading channels; None: all

    def __post_init__(self):
        _check_steps(self.steps)
        _check_cfg(self.cfg_scale)
        if self.solver not in ("euler", "heun"):
            raise ValueError(f"unknown solver {self.solver!r}; use 'euler' or 'heun'")
        _check_t_noise(self.t_noise)

    def forward_passes(self) -> int:
        return self.steps * (2 if self.solver == "heun" else 1)


@dataclass
class Dopri5Plan:
    """Adaptive steps: how many is known only after a run, which records them in the plan."""
    cfg_scale: float = 4.0
    atol: float = 1e-6
    rtol: float = 1e-3
    max_steps: int = 1000        # accepted and rejected steps before giving up
    time_scale: float = 1.0
    t_noise: float = 0.0
    guided_channels: int | None = None
    steps_taken: int = 0         # accepted and rejected steps of the last completed run
    passes_used: int = 0         # model evaluations of the last completed run (2 + 6 a step)

    def __post_init__(self):
        _check_cfg(self.cfg_scale)
        _check_t_noise(self.t_noise)
        if self.atol <= 0 or self.rtol <= 0:
            raise ValueError(f"atol and rtol must be positive, got {self.atol} and {self.rtol}")
        _check_steps(self.max_steps)

    @property
    def steps(self) -> int:
        return self.steps_taken

    def forward_passes(self) -> int:
        return self.passes_used


@dataclass
class SDEPlan:
    """Euler-Maruyama on SiT's linear interpolant (t = 0 noise, t = 1 data).

    `steps` counts model evaluations: steps - 1 stochastic steps on linspace(0, 1 - last_step,
    steps), then one deterministic step of the drift over `last_step` (SiT's "Mean" last step).
    """
    steps: int = 250
    cfg_scale: float = 4.0
    diffusion: str = "sigma"     # the diffusion coefficient w(t); one of DIFFUSION_FORMS
    diffusion_norm: float = 1.0
    last_step: float = 0.04
    time_scale: float = 1.0
    guided_channels: int | None = None

    def __post_init__(self):
        _check_steps(self.steps)
        _check_cfg(self.cfg_scale)
        if self.diffusion not in DIFFUSION_FORMS:
            raise ValueError(f"unknown diffusion form {self.diffusion!r}; use one of "
                             f"{', '.join(DIFFUSION_FORMS)}")
        if not 0 < self.last_step < 1:
            raise ValueError(f"last_step must lie between 0 and 1, got {self.last_step}")

    def forward_passes(self) -> int:
        return self.steps


@dataclass
class GaussianPlan:
    """DDPM with an epsilon-predicting model on the linear beta schedule (DiT, ADM).

    The model sees the original integer timesteps of the respaced ones. "learned-range" reads
    the variance from the prediction's second half of channels (learned sigma).
    """
    steps: int = 250
    sampler: str = "ddpm"        # "ddpm" (ancestral) | "ddim"
    cfg_scale: float = 4.0
    eta: float = 0.0             # DDIM's noise; 0 is deterministic
    variance: str = "learned-range"  # | "fixed-large" | "fixed-small"
    guided_channels: int | None = None
    train_steps: int = 1000

    def __post_init__(self):
        _check_steps(self.steps)
        _check_cfg(self.cfg_scale)
        if self.sampler not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {self.sampler!r}; use 'ddpm' or 'ddim'")
        if self.variance not in ("learned-range", "fixed-large", "fixed-small"):
            raise ValueError(f"unknown variance {self.variance!r}; use 'learned-range', "
                             "'fixed-large' or 'fixed-small'")
        if self.steps > self.train_steps:
            raise ValueError(f"steps ({self.steps}) cannot exceed the {self.train_steps} "
                             "timesteps the model was trained on")
        if self.eta < 0:
            raise ValueError(f"eta must be 0 or more, got {self.eta}")

    def forward_passes(self) -> int:
        return self.steps


PLANS = (FlowPlan, Dopri5Plan, SDEPlan, GaussianPlan)


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


def _check_cfg(scale: float) -> None:
    if scale < 0:
        raise ValueError(f"the guidance scale must be 0 or more, got {scale}")


def _check_t_noise(t_noise: float) -> None:
    if t_noise not in (0.0, 1.0):
        raise ValueError(f"t_noise must be 0 or 1, got {t_noise}")


# ---------------------------------------------------------------- model predictions with CFG

def guided_prediction(model, labels: mx.array, cfg_scale: float, time_scale: float = 1.0,
                      keep_channels: int | None = None, guided_channels: int | None = None, *,
                      upstream_batch: bool = False) -> Predict:
    """The prediction for latents x at time t, with the null class in the same batch for CFG.

    `keep_channels` keeps the leading output channels (None: as many as x has). CFG mixes the
    leading `guided_channels` (None: as many as x has); the other channels come from the
    conditional pass, as DiT's and SiT's `forward_with_cfg` guide 3 of 4 latent channels.
    With `upstream_batch`, x is that function's batch [x, x']: the model sees [x, x], and the
    second half of the result keeps the unconditional values outside the guided channels. Only
    an adaptive solver needs it, because its error norm spans the whole batch.
    """
    use_cfg = cfg_scale != 1.0
    if upstream_batch and not use_cfg:
        raise ValueError("the upstream CFG batch exists only with guidance (cfg_scale != 1)")
    cond_labels = with_null(labels, model.null_class) if use_cfg else labels

    def predict(x: mx.array, t: float) -> mx.array:
        first = x[: x.shape[0] // 2] if upstream_batch else x
        inputs = doubled(first) if use_cfg else first
        timesteps = mx.full((inputs.shape[0],), t * time_scale, dtype=mx.float32)
        out = model(inputs, cond_labels, timesteps)[..., :keep_channels or x.shape[-1]]
        if not use_cfg:
            return out.astype(x.dtype)
        g = guided_channels or x.shape[-1]
        mixed = guide(out[..., :g], cfg_scale)
        if g >= out.shape[-1]:
            return (doubled(mixed) if upstream_batch else mixed).astype(x.dtype)
        cond, uncond = mx.split(out[..., g:], 2, axis=0)
        result = mx.concatenate([mixed, cond], axis=-1)
        if upstream_batch:
            result = mx.concatenate([result, mx.concatenate([mixed, uncond], axis=-1)])
        return result.astype(x.dtype)

    return predict


def guided_velocity(model, labels: mx.array, cfg_scale: float, time_scale: float = 1000.0,
                    out_channels: int | None = None, guided_channels: int | None = None) -> Velocity:
    """Velocity of a class-conditional backbone with CFG; `out_channels` keeps the leading
    channels of the prediction (learned-sigma models emit more)."""
    return guided_prediction(model, labels, cfg_scale, time_scale, out_channels, guided_channels)


# ---------------------------------------------------------------- fixed-step flow ODE

def flow_times(steps: int, shift: float = 1.0, t_noise: float = 1.0) -> np.ndarray:
    """steps + 1 times from noise to data, shifted towards noise when shift > 1."""
    t = np.linspace(1.0, 0.0, steps + 1)
    t = shift * t / (1 + (shift - 1) * t)
    return t if t_noise == 1.0 else 1.0 - t


def integrate(velocity: Velocity, x: mx.array, times, solver: str = "euler") -> Iterator[mx.array]:
    """Yield x after each step of the ODE dx/dt = velocity(x, t) along `times`."""
    times = [float(t) for t in times]
    for t, t_next in zip(times[:-1], times[1:]):
        dt = t_next - t
        v = velocity(x, t)
        if solver == "heun":
            x_pred = x + dt * v
            x = x + dt * 0.5 * (v + velocity(x_pred, t_next))
        else:
            x = x + dt * v
        mx.eval(x)
        yield x


# ---------------------------------------------------------------- adaptive Dormand-Prince 5(4)

# Butcher tableau: stage times, stage weights (the last row is the 5th-order solution, whose
# derivative is the next step's first stage), error weights (5th minus 4th order) and the
# weights of the midpoint used by the 4th-order dense output.
DP_TIMES = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DP_WEIGHTS = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
DP_ERROR = (35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
            -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60)
DP_MID = tuple(c / 2 for c in (6025192743 / 30085553152, 0.0, 51252292925 / 65400821598,
                               -2691868925 / 45128329728, 187940372067 / 1594534317056,
                               -1776094331 / 19743644256, 11237099 / 235043384))
SAFETY, MAX_GROWTH, MAX_SHRINK = 0.9, 10.0, 0.2


def _rms(x: mx.array) -> float:
    return float(mx.sqrt(mx.mean(mx.square(x.astype(mx.float32)))))


def _combine(x, dt: float, weights, ks):
    # plain arithmetic, so the PyTorch reference shares it
    total = None
    for w, k in zip(weights, ks):
        if w:
            total = w * k if total is None else total + w * k
    return x + dt * total


def _initial_step(f, y0, f0, t0: float, atol: float, rtol: float, order: int = 4,
                  rms=_rms) -> float:
    """Hairer, Norsett and Wanner's starting step (one extra evaluation), as torchdiffeq's.
    `rms` is the framework's root mean square; the PyTorch reference passes its own."""
    scale = atol + abs(y0) * rtol
    d0, d1 = rms(y0 / scale), rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    f1 = f(y0 + h0 * f0, t0 + h0)
    d2 = rms((f1 - f0) / scale) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1)


def _next_step(dt: float, ratio: float) -> float:
    if ratio == 0:
        return dt * MAX_GROWTH
    # an accepted step never shrinks the next one
    floor = 1.0 if ratio < 1 else MAX_SHRINK
    return dt * min(MAX_GROWTH, max(SAFETY * ratio ** (-1 / 5), floor))


def dopri5(f: Callable[[mx.array, float], mx.array], y: mx.array, t0: float = 0.0,
           t1: float = 1.0, *, atol: float = 1e-6, rtol: float = 1e-3, max_steps: int = 1000,
           stats: dict | None = None) -> Iterator[tuple[mx.array, float]]:
    """Integrate dy/dt = f(y, t) from t0 to t1 > t0; yield (y, t) after each accepted step.

    The final step may overshoot t1 (as torchdiffeq's does); the last yield is y(t1) from the
    4th-order interpolant inside that step. `stats` receives "steps" (accepted and rejected)
    and "evals" (calls of f).
    """
    stats = {} if stats is None else stats
    stats.update(steps=0, evals=0)

    def call(state, t):
        stats["evals"] += 1
        return f(state, t)

    k1 = call(y, t0)
    dt = _initial_step(call, y, k1, t0, atol, rtol)
    t = t0
    while True:
        if stats["steps"] >= max_steps:
            raise ValueError(f"dopri5 took {max_steps} steps without reaching t={t1} (at "
                             f"t={t:.4f}); raise max_steps or loosen atol/rtol")
        ks = [k1]
        for c, weights in zip(DP_TIMES, DP_WEIGHTS):
            stage = _combine(y, dt, weights, ks)
            ks.append(call(stage, t + dt if c == 1.0 else t + c * dt))
        y_next, k7 = stage, ks[-1]
        error = _combine(mx.zeros_like(y), dt, DP_ERROR, ks)
        tolerance = atol + rtol * mx.maximum(mx.abs(y), mx.abs(y_next))
        ratio = _rms(error / tolerance)
        stats["steps"] += 1
        if ratio <= 1:
            if t + dt >= t1:
                mid = _combine(y, dt, DP_MID, ks)
                final = _interpolate(y, y_next, mid, k1, k7, dt, (t1 - t) / dt)
                mx.eval(final)
                yield final, t1
                return
            y, k1, t = y_next, k7, t + dt
            mx.eval(y, k1)
            yield y, t
        dt = _next_step(dt, ratio)


def _interpolate(y0, y1, mid, f0, f1, dt: float, x: float) -> mx.array:
    """The quartic through y0, the midpoint and y1 with slopes f0 and f1, at fraction x."""
    a = 2 * dt * (f1 - f0) - 8 * (y1 + y0) + 16 * mid
    b = dt * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * mid
    c = dt * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * mid
    d = dt * f0
    return y0 + x * (d + x * (c + x * (b + x * a)))


# ---------------------------------------------------------------- SDE on the linear interpolant

def diffusion_coefficient(form: str, t: float, norm: float = 1.0) -> float:
    """SiT's w(t) forms; "SBDM" is left out because it is infinite at t = 0."""
    return DIFFUSION_FORMS[form](t, norm)


DIFFUSION_FORMS = {
    "constant": lambda t, n: n,
    "sigma": lambda t, n: n * (1 - t),
    "linear": lambda t, n: n * (1 - t),
    "decreasing": lambda t, n: 0.25 * (n * math.cos(math.pi * t) + 1) ** 2,
    "increasing-decreasing": lambda t, n: n * math.sin(math.pi * t) ** 2,
}


def sde_times(steps: int, last_step: float) -> np.ndarray:
    return np.linspace(0.0, 1.0 - last_step, steps)


# ---------------------------------------------------------------- discrete Gaussian diffusion

def linear_betas(train_steps: int = 1000) -> np.ndarray:
    """DDPM's linear schedule, 1e-4 to 0.02 at 1000 steps, scaled for other step counts."""
    scale = 1000 / train_steps
    return np.linspace(scale * 1e-4, scale * 0.02, train_steps, dtype=np.float64)


def respaced_timesteps(train_steps: int, steps: int) -> list[int]:
    """`steps` timesteps evenly spread over 0..train_steps-1, rounded (DiT's respacing "N")."""
    stride = 1.0 if steps <= 1 else (train_steps - 1) / (steps - 1)
    taken, position = [], 0.0
    for _ in range(steps):
        taken.append(round(position))
        position += stride  # accumulated, not multiplied, so the rounding matches upstream's
    return sorted(set(taken))


class GaussianSchedule:
    """Per respaced step j (0 = cleanest): coefficients in float64, used as float32 scalars."""

    def __init__(self, train_steps: int, steps: int):
        self.timesteps = respaced_timesteps(train_steps, steps)
        base = np.cumprod(1.0 - linear_betas(train_steps))[self.timesteps]
        self.betas = 1.0 - base / np.append(1.0, base[:-1])
        ab = np.cumprod(1.0 - self.betas)
        ab_prev = np.append(1.0, ab[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = ab, ab_prev
        self.sqrt_recip_ab = np.sqrt(1.0 / ab)
        self.sqrt_recipm1_ab = np.sqrt(1.0 / ab - 1.0)
        variance = self.betas * (1.0 - ab_prev) / (1.0 - ab)
        # the posterior variance is 0 at j = 0, where no noise is added; its log takes j = 1's
        first = variance[1] if len(variance) > 1 else 1.0
        self.log_variance_small = np.log(np.append(first, variance[1:]))
        self.log_variance_large = np.log(np.append(first, self.betas[1:]))
        self.mean_coef_x0 = self.betas * np.sqrt(ab_prev) / (1.0 - ab)
        self.mean_coef_xt = (1.0 - ab_prev) * np.sqrt(1.0 - self.betas) / (1.0 - ab)

    def __len__(self) -> int:
        return len(self.timesteps)

    def predict_x0(self, j: int, x: mx.array, eps: mx.array) -> mx.array:
        return float(self.sqrt_recip_ab[j]) * x - float(self.sqrt_recipm1_ab[j]) * eps


def ddpm_step(schedule: GaussianSchedule, j: int, x, out, noise, variance: str = "learned-range"):
    """One ancestral step from respaced step j to j - 1 given the model output `out`.

    Plain arithmetic on the arrays, so the PyTorch reference runs the same function.
    """
    c = x.shape[-1]
    x0 = schedule.predict_x0(j, x, out[..., :c])
    mean = float(schedule.mean_coef_x0[j]) * x0 + float(schedule.mean_coef_xt[j]) * x
    if j == 0:
        return mean
    if variance == "learned-range":
        # the model interpolates, in log space, between the posterior variance and beta
        frac = (out[..., c:2 * c] + 1) / 2
        log_var = frac * float(np.log(schedule.betas[j])) + \
            (1 - frac) * float(schedule.log_variance_small[j])
    else:
        table = schedule.log_variance_large if variance == "fixed-large" \
            else schedule.log_variance_small
        log_var = float(table[j])
    return mean + math.e ** (0.5 * log_var) * noise


def ddim_step(schedule: GaussianSchedule, j: int, x, out, noise, eta: float = 0.0):
    """One DDIM step from respaced step j to j - 1; deterministic at eta 0. Plain arithmetic
    on the arrays, so the PyTorch reference runs the same function."""
    c = x.shape[-1]
    x0 = schedule.predict_x0(j, x, out[..., :c])
    # epsilon re-derived from x0, as upstream does (it differs when x0 is clipped)
    eps = (float(schedule.sqrt_recip_ab[j]) * x - x0) / float(schedule.sqrt_recipm1_ab[j])
    ab, ab_prev = schedule.alphas_cumprod[j], schedule.alphas_cumprod_prev[j]
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
    x = float(math.sqrt(ab_prev)) * x0 + float(math.sqrt(1 - ab_prev - sigma ** 2)) * eps
    if j == 0 or sigma == 0:
        return x
    return x + sigma * noise


# ---------------------------------------------------------------- sampling loops

class Noise:
    """Every random number of one diffusion run, each image's from its own key: `keys` (B, 2)
    (`keys.image_keys`) each split into steps + 1, the initial noise's first, then step i's."""

    def __init__(self, keys: mx.array, steps: int):
        self._keys = split_each(keys, steps + 1)

    def start(self, latent_shape: tuple) -> mx.array:
        """Standard normal latents (B, H, W, C) to start from."""
        return per_image(mx.random.normal, self._keys[:, 0], latent_shape)

    def step(self, i: int, shape: tuple, dtype=mx.float32) -> mx.array:
        """Step i's standard normal noise of `shape` (B, H, W, C)."""
        if shape[0] != self._keys.shape[0]:
            raise ValueError(f"this noise holds keys for {self._keys.shape[0]} images, not "
                             f"{shape[0]}")
        return per_image(mx.random.normal, self._keys[:, 1 + i], shape[1:], dtype=dtype)


def random_steps(plan) -> int:
    """How many steps of `plan` may draw noise (every step of the stochastic samplers)."""
    return plan.steps if isinstance(plan, (SDEPlan, GaussianPlan)) else 0


def _flow(model, labels, plan: FlowPlan, x):
    velocity = guided_velocity(model, labels, plan.cfg_scale, plan.time_scale, x.shape[-1],
                               plan.guided_channels)
    for i, x in enumerate(integrate(velocity, x, flow_times(plan.steps, plan.shift, plan.t_noise),
                                    plan.solver)):
        yield x, (i + 1) / plan.steps


def _dopri5(model, labels, plan: Dopri5Plan, x):
    batch, mirror = x.shape[0], plan.cfg_scale != 1.0
    predict = guided_prediction(model, labels, plan.cfg_scale, plan.time_scale, x.shape[-1],
                                plan.guided_channels, upstream_batch=mirror)
    if plan.t_noise == 0.0:
        f = predict
    else:  # integrate s = 1 - t upwards, so the solver always moves forward in time
        def f(y, s):
            return -predict(y, 1.0 - s)
    stats = {}
    for y, t in dopri5(f, doubled(x) if mirror else x, 0.0, 1.0, atol=plan.atol,
                       rtol=plan.rtol, max_steps=plan.max_steps, stats=stats):
        yield y[:batch], t
    plan.steps_taken, plan.passes_used = stats["steps"], stats["evals"]


def _sde(model, labels, plan: SDEPlan, x, noise: Noise):
    velocity = guided_velocity(model, labels, plan.cfg_scale, plan.time_scale, x.shape[-1],
                               plan.guided_channels)

    def drift(x, t):
        v = velocity(x, t)
        w = diffusion_coefficient(plan.diffusion, t, plan.diffusion_norm)
        # the linear path's score from its velocity: (t v - x) / (1 - t)
        return v + w * ((t * v - x) / (1 - t)), w

    times = [float(t) for t in sde_times(plan.steps, plan.last_step)]
    dt = times[1] - times[0] if len(times) > 1 else 0.0
    for i, t in enumerate(times[:-1]):
        b, w = drift(x, t)
        dw = noise.step(i, x.shape, x.dtype) * math.sqrt(dt)
        x = x + b * dt + math.sqrt(2 * w) * dw
        mx.eval(x)
        yield x, (i + 1) / plan.steps
    b, _ = drift(x, 1.0 - plan.last_step)
    x = x + b * plan.last_step
    mx.eval(x)
    yield x, 1.0


def _gaussian(model, labels, plan: GaussianPlan, x, noise: Noise):
    schedule = GaussianSchedule(plan.train_steps, plan.steps)
    c = x.shape[-1]
    learned = plan.variance == "learned-range"
    predict = guided_prediction(model, labels, plan.cfg_scale, 1.0, 2 * c if learned else c,
                                plan.guided_channels)
    stochastic = plan.sampler == "ddpm" or plan.eta > 0
    for i, j in enumerate(reversed(range(len(schedule)))):
        out = predict(x, float(schedule.timesteps[j]))
        if learned and out.shape[-1] < 2 * c:
            raise ValueError(f"a learned-range variance needs {2 * c} output channels; the "
                             f"model gives {out.shape[-1]}")
        step_noise = noise.step(i, x.shape, x.dtype) if stochastic and j > 0 else None
        if plan.sampler == "ddpm":
            x = ddpm_step(schedule, j, x, out, step_noise, plan.variance)
        else:
            x = ddim_step(schedule, j, x, out, step_noise, plan.eta)
        mx.eval(x)
        yield x, (i + 1) / len(schedule)


def _trajectory(model, labels: mx.array, plan, *, noise: mx.array | None = None,
                seed: int | None = None, key: mx.array | None = None, first_index: int = 0,
                latent_shape: tuple[int, int, int] | None = None):
    """(latents, fraction of the way done) after each step."""
    draws = Noise(image_keys(labels.shape[0], seed=seed, key=key, first=first_index),
                  random_steps(plan))
    if noise is None:
        if latent_shape is None:
            raise ValueError("pass the initial noise or the latent shape to draw it in")
        noise = draws.start(latent_shape)
    elif noise.shape[0] != labels.shape[0]:
        raise ValueError(f"the noise holds {noise.shape[0]} latents for {labels.shape[0]} labels")
    if isinstance(plan, FlowPlan):
        return _flow(model, labels, plan, noise)
    if isinstance(plan, Dopri5Plan):
        return _dopri5(model, labels, plan, noise)
    if isinstance(plan, SDEPlan):
        return _sde(model, labels, plan, noise, draws)
    if isinstance(plan, GaussianPlan):
        return _gaussian(model, labels, plan, noise, draws)
    raise TypeError(f"no diffusion sampler for plan {type(plan).__name__}")


def iterate(model, labels: mx.array, plan, *, noise: mx.array | None = None,
            seed: int | None = None, key: mx.array | None = None, first_index: int = 0,
            latent_shape: tuple[int, int, int] | None = None) -> Iterator[mx.array]:
    """Yield latents (B, H, W, C) after each step, from `noise` or noise drawn from `seed`.

    The labels are images `first_index`, ... of a run. Each image's initial noise and the step
    noise of the stochastic samplers (DDPM, DDIM with eta > 0, the SDE) come from its own key
    (`keys.image_keys` of `seed` or `key`, or `key` (B, 2) itself; see `Noise`), so a seed
    reproduces an image whatever batch samples it.
    """
    for x, _ in _trajectory(model, labels, plan, noise=noise, seed=seed, key=key,
                            first_index=first_index, latent_shape=latent_shape):
        yield x


def generate(model, labels: mx.array, plan, *, on_step=None, **kwargs) -> mx.array:
    """Latents (B, H, W, C) after the last step; `on_step(done, total)` reports progress.

    An adaptive plan does not know its total in advance: it reports an estimate from the time
    covered so far, which reaches `done` at the end.
    """
    x = None
    for i, (x, progress) in enumerate(_trajectory(model, labels, plan, **kwargs)):
        if on_step:
            total = plan.steps if not isinstance(plan, Dopri5Plan) else \
                max(i + 1, round((i + 1) / max(progress, 1e-9)))
            on_step(i + 1, total)
    return x
