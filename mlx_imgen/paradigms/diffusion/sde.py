"""Euler-Maruyama on SiT's linear interpolant, its drift built from the guided velocity."""

import math
from typing import Iterator

import numpy as np

from ..arrays import MLX
from .common import guided_prediction
from .plans import SDEPlan

# SiT's diffusion coefficients w(t) (plans.DIFFUSION_FORMS names them)
COEFFICIENTS = {
    "constant": lambda t, n: n,
    "sigma": lambda t, n: n * (1 - t),
    "linear": lambda t, n: n * (1 - t),
    "decreasing": lambda t, n: 0.25 * (n * math.cos(math.pi * t) + 1) ** 2,
    "increasing-decreasing": lambda t, n: n * math.sin(math.pi * t) ** 2,
}


def diffusion_coefficient(form: str, t: float, norm: float = 1.0) -> float:
    return COEFFICIENTS[form](t, norm)


def sde_times(steps: int, last_step: float) -> np.ndarray:
    return np.linspace(0.0, 1.0 - last_step, steps)


def trajectory(model, labels, plan: SDEPlan, x, noise, xp=MLX) -> Iterator:
    """steps - 1 stochastic steps, then one deterministic step of the drift over last_step;
    step i's standard normal draw is `noise.step(i, shape, dtype)`."""
    velocity = guided_prediction(model, labels, plan.cfg_scale, plan.time_scale, x.shape[-1],
                                 plan.guided_channels, xp=xp)

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
        xp.eval(x)
        yield x, (i + 1) / plan.steps
    b, _ = drift(x, 1.0 - plan.last_step)
    x = x + b * plan.last_step
    xp.eval(x)
    yield x, 1.0
