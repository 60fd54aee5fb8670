"""Fixed-step flow ODE: Euler or Heun steps along the guided velocity field."""

from typing import Callable, Iterator

import numpy as np

from ..arrays import MLX
from .common import Predict, guided_prediction
from .plans import FlowPlan


def shifted(t, shift: float):
    """The time shift t -> shift * t / (1 + (shift - 1) * t): more of the steps near noise."""
    return shift * t / (1 + (shift - 1) * t)


def flow_times(steps: int, shift: float = 1.0, t_noise: float = 1.0, schedule: str = "linear",
               train_steps: int = 1000) -> np.ndarray:
    """steps + 1 times from noise to data, shifted towards noise when shift > 1.

    "linear" spaces them evenly before the shift. "discrete" spaces `steps` of them evenly from
    1 to the shifted last trained time 1/train_steps, shifts them, and ends at 0: diffusers'
    FlowMatchEulerDiscreteScheduler takes that end from its already shifted training sigmas.
    """
    if schedule == "discrete":
        last = shifted(1.0 / train_steps, shift)
        t = np.append(shifted(np.linspace(1.0, last, steps), shift), 0.0)
    else:
        t = shifted(np.linspace(1.0, 0.0, steps + 1), shift)
    return t if t_noise == 1.0 else 1.0 - t


def euler_step(velocity: Predict, x, t: float, t_next: float):
    return x + (t_next - t) * velocity(x, t)


def heun_step(velocity: Predict, x, t: float, t_next: float):
    """Euler's prediction, then the trapezoid of the slopes at both ends."""
    dt = t_next - t
    v = velocity(x, t)
    return x + dt * 0.5 * (v + velocity(x + dt * v, t_next))


STEPS: dict[str, Callable] = {"euler": euler_step, "heun": heun_step}


def integrate(velocity: Predict, x, times, solver: str = "euler", xp=MLX) -> Iterator:
    """Yield x after each step of the ODE dx/dt = velocity(x, t) along `times`."""
    step = STEPS[solver]
    times = [float(t) for t in times]
    for t, t_next in zip(times[:-1], times[1:]):
        x = step(velocity, x, t, t_next)
        xp.eval(x)
        yield x


def trajectory(model, labels, plan: FlowPlan, x, noise, xp=MLX) -> Iterator:
    velocity = guided_prediction(model, labels, plan.cfg_scale, plan.time_scale, x.shape[-1],
                                 plan.guided_channels, xp=xp)
    times = flow_times(plan.steps, plan.shift, plan.t_noise, plan.schedule,
                       plan.train_steps)
    for i, x in enumerate(integrate(velocity, x, times, plan.solver, xp)):
        yield x, (i + 1) / plan.steps
