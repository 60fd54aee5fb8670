"""Diffusion sampling. Flow matching: integrate a velocity field with Euler or Heun steps.

Convention for the rectified flow: x_t = (1 - t) * data + t * noise, so the sampler integrates
dx/dt = v from t = 1 (noise) to t = 0 (data). Families with the opposite time direction pass
their own time grid.
"""

from dataclasses import dataclass
from typing import Callable, Iterator

import mlx.core as mx
import numpy as np

from .guidance import doubled, guide, with_null

Velocity = Callable[[mx.array, float], mx.array]


@dataclass
class FlowPlan:
    steps: int = 50
    solver: str = "euler"        # "euler" | "heun"
    shift: float = 1.0           # time shift: t -> shift * t / (1 + (shift - 1) * t)
    cfg_scale: float = 4.0
    time_scale: float = 1000.0   # the model sees t * time_scale

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.solver not in ("euler", "heun"):
            raise ValueError(f"unknown solver {self.solver!r}; use 'euler' or 'heun'")

    def forward_passes(self) -> int:
        return self.steps * (2 if self.solver == "heun" else 1)


def flow_times(steps: int, shift: float = 1.0) -> np.ndarray:
    """steps + 1 times from 1 (noise) to 0 (data), shifted towards noise when shift > 1."""
    t = np.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)


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


def guided_velocity(model, labels: mx.array, cfg_scale: float, time_scale: float = 1000.0,
                    out_channels: int | None = None) -> Velocity:
    """Velocity of a class-conditional backbone, with the null class in the same batch for CFG.

    `out_channels` keeps the leading channels of the prediction (learned-sigma models emit more).
    """
    use_cfg = cfg_scale != 1.0
    cond_labels = with_null(labels, model.null_class) if use_cfg else labels

    def velocity(x: mx.array, t: float) -> mx.array:
        inputs = doubled(x) if use_cfg else x
        timesteps = mx.full((inputs.shape[0],), t * time_scale, dtype=mx.float32)
        out = model(inputs, cond_labels, timesteps)[..., :out_channels or x.shape[-1]]
        return (guide(out, cfg_scale) if use_cfg else out).astype(x.dtype)

    return velocity


def iterate(model, labels: mx.array, plan: FlowPlan, *, noise: mx.array | None = None,
            seed: int | None = None, latent_shape: tuple[int, int, int] | None = None
            ) -> Iterator[mx.array]:
    """Yield latents (B, H, W, C) after each solver step, from `noise` or noise drawn from `seed`."""
    if noise is None:
        key = mx.random.key(0 if seed is None else seed)
        noise = mx.random.normal((labels.shape[0], *latent_shape), key=key)
    velocity = guided_velocity(model, labels, plan.cfg_scale, plan.time_scale, noise.shape[-1])
    yield from integrate(velocity, noise, flow_times(plan.steps, plan.shift), plan.solver)


def generate(model, labels: mx.array, plan: FlowPlan, *, on_step=None, **kwargs) -> mx.array:
    """Latents (B, H, W, C) after the last solver step."""
    x = None
    for i, x in enumerate(iterate(model, labels, plan, **kwargs)):
        if on_step:
            on_step(i + 1, plan.steps)
    return x
