"""Multistep DPM-Solver++ on the rectified flow: x_sigma = (1 - sigma) * data + sigma * noise.

With alpha = 1 - sigma and lambda = log(alpha / sigma), the exact solution of the flow ODE
from sigma to sigma' in terms of the data prediction x0 = x - sigma * v is
    x' = (sigma' / sigma) * x + alpha' * integral over lambda of e^(lambda - lambda') x0.
First order holds x0 constant over the step: x' = (sigma'/sigma) x + alpha' (1 - e^-h) x0 with
h = lambda' - lambda. Second order (multistep, the midpoint form) also uses the previous
step's x0 for its slope in lambda: x0 + (x0 - x0_prev) * h / (2 h_prev).
At sigma' = 0 (alpha' = 1, h infinite) the first-order step lands on x0 itself.
"""

import math
from typing import Iterator

import numpy as np

from ..arrays import MLX
from .common import guided_prediction
from .flow import shifted
from .plans import DPMSolverPlan


def dpm_sigmas(steps: int, shift: float, train_steps: int = 1000) -> np.ndarray:
    """steps + 1 sigmas: the trained times 1 - 1/train_steps .. 0 evenly spaced, shifted, the
    zero dropped, then a final 0 (diffusers' use_flow_sigmas with final_sigmas_type "zero")."""
    grid = 1.0 - np.linspace(1.0, 1.0 / train_steps, steps + 1)
    return np.append(shifted(grid, shift)[::-1][:-1], 0.0)


def dpm_timesteps(sigmas: np.ndarray, train_steps: int = 1000) -> np.ndarray:
    """The integer timesteps the model sees for all but the final sigma (truncated, as the
    reference casts them)."""
    return np.floor(sigmas[:-1] * train_steps).astype(np.int64)


def _lambda(sigma: float) -> float:
    return math.log(1.0 - sigma) - math.log(sigma)


def dpm_step(x, x0, sigma: float, sigma_next: float, x0_prev=None,
             sigma_prev: float | None = None):
    """One DPM-Solver++ step from sigma to sigma_next; second order when the previous step's
    data prediction `x0_prev` (at `sigma_prev`) is given."""
    if sigma_next == 0.0:
        return x0
    h = _lambda(sigma_next) - _lambda(sigma)
    gain = (1.0 - sigma_next) * -math.expm1(-h)  # alpha' (1 - e^-h)
    if x0_prev is not None:
        r = (_lambda(sigma) - _lambda(sigma_prev)) / h
        x0 = x0 + (0.5 / r) * (x0 - x0_prev)
    return (sigma_next / sigma) * x + gain * x0


def trajectory(model, labels, plan: DPMSolverPlan, x, noise, xp=MLX) -> Iterator:
    """Deterministic: `noise` is not drawn from."""
    velocity = guided_prediction(model, labels, plan.cfg_scale, plan.time_scale, x.shape[-1],
                                 plan.guided_channels, xp=xp)
    sigmas = [float(s) for s in dpm_sigmas(plan.steps, plan.shift, plan.train_steps)]
    timesteps = dpm_timesteps(np.array(sigmas), plan.train_steps)
    x0_prev = None
    for i in range(plan.steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = x - sigma * velocity(x, float(timesteps[i]))
        second = plan.order == 2 and x0_prev is not None
        x = dpm_step(x, x0, sigma, sigma_next, x0_prev if second else None,
                     sigmas[i - 1] if second else None)
        x0_prev = x0
        xp.eval(x)
        yield x, (i + 1) / plan.steps
