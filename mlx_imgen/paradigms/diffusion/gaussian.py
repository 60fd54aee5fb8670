"""Discrete-time DDPM with an epsilon model (DiT, ADM): ancestral or DDIM steps on respaced
timesteps, with a learned-range or fixed variance."""

import math
from typing import Iterator

import numpy as np

from ..arrays import MLX
from .common import guided_prediction
from .plans import GaussianPlan


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

    def predict_x0(self, j: int, x, eps):
        return float(self.sqrt_recip_ab[j]) * x - float(self.sqrt_recipm1_ab[j]) * eps


def ddpm_step(schedule: GaussianSchedule, j: int, x, out, noise, variance: str = "learned-range"):
    """One ancestral step from respaced step j to j - 1 given the model output `out`."""
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
    """One DDIM step from respaced step j to j - 1; deterministic at eta 0."""
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


# plan.sampler -> the step from respaced step j to j - 1
STEPS = {
    "ddpm": lambda schedule, j, x, out, noise, plan: ddpm_step(schedule, j, x, out, noise,
                                                              plan.variance),
    "ddim": lambda schedule, j, x, out, noise, plan: ddim_step(schedule, j, x, out, noise,
                                                              plan.eta),
}


def trajectory(model, labels, plan: GaussianPlan, x, noise, xp=MLX) -> Iterator:
    """Step i (respaced step j) adds `noise.step(i, shape, dtype)` where the sampler is
    stochastic; the model sees the original integer timesteps."""
    schedule = GaussianSchedule(plan.train_steps, plan.steps)
    c = x.shape[-1]
    learned = plan.variance == "learned-range"
    predict = guided_prediction(model, labels, plan.cfg_scale, 1.0, 2 * c if learned else c,
                                plan.guided_channels, xp=xp)
    step = STEPS[plan.sampler]
    stochastic = plan.sampler == "ddpm" or plan.eta > 0
    for i, j in enumerate(reversed(range(len(schedule)))):
        out = predict(x, float(schedule.timesteps[j]))
        if learned and out.shape[-1] < 2 * c:
            raise ValueError(f"a learned-range variance needs {2 * c} output channels; the "
                             f"model gives {out.shape[-1]}")
        step_noise = noise.step(i, x.shape, x.dtype) if stochastic and j > 0 else None
        x = step(schedule, j, x, out, step_noise, plan)
        xp.eval(x)
        yield x, (i + 1) / len(schedule)
