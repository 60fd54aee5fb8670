"""Diffusion sampling, written against the backbone interface and knowing nothing of a family.

Five plans (plans.py), one solver module each, dispatched by SOLVERS:
- `FlowPlan` (flow.py): fixed Euler or Heun steps along a velocity field;
- `Dopri5Plan` (dopri5.py): the same ODE with adaptive Dormand-Prince 5(4) steps;
- `SDEPlan` (sde.py): Euler-Maruyama on the linear interpolant, its drift built from the
  velocity;
- `GaussianPlan` (gaussian.py): discrete-time DDPM with an epsilon model, ancestral or DDIM
  steps on respaced timesteps, with a learned-range or fixed variance;
- `DPMSolverPlan` (dpmsolver.py): multistep DPM-Solver++ on the rectified flow (Sana).
Every solver's `trajectory(model, labels, plan, x, noise, xp)` yields (latents, fraction done)
in the array namespace `xp` (arrays.py), so the PyTorch reference runs the same bodies.
`labels` is class labels or a condition object of conditions.py (e.g. CrossAttentionText, whose
encoded prompts reach the model as keyword arguments; see common.guided_prediction).
"""

from typing import Iterator

import mlx.core as mx

from ..arrays import MLX
from ..conditions import as_condition
from ..keys import image_keys
from . import dopri5 as _dopri5
from . import dpmsolver, flow, gaussian, sde
from .common import Noise, Predict, guided_prediction, guided_velocity
from .dopri5 import dopri5
from .dpmsolver import dpm_sigmas, dpm_step, dpm_timesteps
from .flow import flow_times, integrate, shifted
from .gaussian import GaussianSchedule, ddim_step, ddpm_step, linear_betas, respaced_timesteps
from .plans import PLANS, Dopri5Plan, DPMSolverPlan, FlowPlan, GaussianPlan, SDEPlan
from .sde import diffusion_coefficient, sde_times

PARADIGM = "diffusion"
SOLVERS = {FlowPlan: flow.trajectory, Dopri5Plan: _dopri5.trajectory, SDEPlan: sde.trajectory,
           GaussianPlan: gaussian.trajectory, DPMSolverPlan: dpmsolver.trajectory}

__all__ = ["PLANS", "SOLVERS", "Dopri5Plan", "DPMSolverPlan", "FlowPlan", "GaussianPlan",
           "SDEPlan", "Noise", "Predict", "GaussianSchedule", "guided_prediction",
           "guided_velocity", "dopri5", "dpm_sigmas", "dpm_step", "dpm_timesteps", "flow_times",
           "integrate", "shifted", "ddim_step", "ddpm_step", "linear_betas",
           "respaced_timesteps", "diffusion_coefficient", "sde_times", "iterate", "generate",
           "random_steps", "solver_of"]


def solver_of(plan):
    """The trajectory function of `plan`'s solver (a plan subclass takes its base's)."""
    for kind in type(plan).__mro__:
        if kind in SOLVERS:
            return SOLVERS[kind]
    raise TypeError(f"no diffusion solver for plan {type(plan).__name__}")


def random_steps(plan) -> int:
    """How many steps of `plan` may draw noise (every step of the stochastic samplers)."""
    return plan.steps if isinstance(plan, (SDEPlan, GaussianPlan)) else 0


def _trajectory(model, labels, plan, *, noise: mx.array | None = None,
                seed: int | None = None, key: mx.array | None = None, first_index: int = 0,
                latent_shape: tuple[int, int, int] | None = None):
    """(latents, fraction of the way done) after each step."""
    solve = solver_of(plan)
    batch = as_condition(labels).batch
    draws = Noise(image_keys(batch, seed=seed, key=key, first=first_index), random_steps(plan))
    if noise is None:
        if latent_shape is None:
            raise ValueError("pass the initial noise or the latent shape to draw it in")
        noise = draws.start(latent_shape)
    elif noise.shape[0] != batch:
        raise ValueError(f"the noise holds {noise.shape[0]} latents for {batch} images' "
                         "conditions")
    return solve(model, labels, plan, noise, draws, MLX)


def iterate(model, labels, plan, *, noise: mx.array | None = None,
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


def generate(model, labels, plan, *, on_step=None, **kwargs) -> mx.array:
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
