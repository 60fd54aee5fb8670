"""Torch runs of the paradigms' own loop bodies, for every plan of `mlx_imgen.paradigms`.

The loops are the MLX samplers', run on torch tensors through `arrays.TorchArrays` under
torch.inference_mode, so every plan option means the same in both frameworks. `iterate` returns
a `Sampling`: an iterator that yields after every step, as the MLX iterators do, and counts in
`forward_passes` the model calls it ran (one call evaluates the conditional and the null batch
together under CFG). Random draws come from a seeded torch.Generator and differ from MLX's;
MLX's draws passed in (`draws` of a token run, see `replay_mlx_draws`; a diffusion run's
`noise` and `step_noise`, see `replay_mlx_noise`) give MLX's results.
"""

import copy
from typing import Callable, Iterator

import numpy as np

from mlx_imgen.paradigms import diffusion, masked_token, next_token, paradigm_of
from mlx_imgen.paradigms.keys import image_keys

from . import require_torch, to_torch
from .arrays import TorchArrays

torch = require_torch()


class Sampling:
    """Iterates a torch run's steps; `forward_passes` counts the model calls run so far and,
    for the adaptive dopri5, `steps_taken` its accepted and rejected steps once it is done.
    The run works on a copy of the plan, so the caller's plan is left alone."""

    def __init__(self, model, plan, loop: Callable[..., Iterator]):
        self.model, self.plan, self.forward_passes = model, copy.copy(plan), 0
        self._steps = loop(_Counted(self), self.plan)

    def __iter__(self) -> "Sampling":
        return self

    def __next__(self):
        with torch.inference_mode():
            return next(self._steps)

    @property
    def steps_taken(self) -> int | None:
        return getattr(self.plan, "steps_taken", None)


class _Counted:
    """The model as the loop sees it: every call counts in the run's forward_passes."""

    def __init__(self, run: Sampling):
        self._run = run

    def __call__(self, *args, **kwargs):
        self._run.forward_passes += 1
        return self._run.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._run.model, name)


def _tensor(value, device):
    value = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
    return value.to(device)


def _ids_or_flags(value, device):
    """An id or flag array as a torch tensor on `device`: integers as torch.long (the loops'
    `xp.ids`), booleans as they are."""
    tensor = _tensor(value, device)
    return tensor if tensor.dtype == torch.bool else tensor.long()


def _condition_tensor(value, device):
    """An array a condition holds as a torch tensor on `device`: floating MLX arrays (encoded
    text) keep their dtype, ids and flags go through `_ids_or_flags`."""
    import mlx.core as mx
    if isinstance(value, mx.array) and mx.issubdtype(value.dtype, mx.floating):
        return to_torch(value).to(device)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(device)
    return _ids_or_flags(value, device)


CONDITIONS = (next_token.ClassPrefix, next_token.TextPrefix, *masked_token.CONDITIONS)


def condition_on(condition, device):
    """Class labels, or a condition object of `next_token` (ClassPrefix, TextPrefix) or
    `masked_token` (ClassLabels, CrossAttentionText), with every array it holds (ids, masks,
    encoded text, image rows) as a torch tensor on `device`; the loop asks the copy for the
    model's arguments as it asks the MLX one."""
    if not isinstance(condition, CONDITIONS):
        return _ids_or_flags(condition, device)
    copied = copy.copy(condition)
    for name, value in vars(condition).items():
        if value is not None and not isinstance(value, (int, float, str, bool)):
            setattr(copied, name, _condition_tensor(value, device))
    return copied


class GeneratorDraws:
    """Every random number of a torch run from one seeded torch.Generator, with the methods
    of MLX's next_token.TokenDraws, masked_token.Draws and diffusion.Noise."""

    def __init__(self, device, seed: int | None):
        self.device = device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(0 if seed is None else seed)

    def normal(self, shape):
        return torch.randn(tuple(shape), generator=self.generator, device=self.device)

    def step(self, i: int, shape, dtype=None):
        return self.normal(shape)

    def token_noise(self, i: int, shape):
        """Gumbel noise: -log of standard exponential draws."""
        uniform = torch.empty(tuple(shape), device=self.device)
        return -uniform.exponential_(generator=self.generator).log()

    choice_noise = token_noise

    def order_shifts(self, batch: int, num_tokens: int):
        return torch.randint(0, num_tokens, (batch,), generator=self.generator,
                             device=self.device)


class OnDevice:
    """Draws given by the caller (e.g. MLX's, replayed), as tensors on the run's device."""

    def __init__(self, draws, device):
        self.draws, self.device = draws, device

    def __getattr__(self, name):
        method = getattr(self.draws, name)
        return lambda *args: _tensor(method(*args), self.device)


class ReplayedSteps:
    """Diffusion step noise given as `source(i, shape)` or a sequence, checked against the
    latents' shape."""

    def __init__(self, source, device):
        self.source, self.device = source, device

    def step(self, i: int, shape, dtype=None):
        shape = tuple(shape)
        value = self.source(i, shape) if callable(self.source) else self.source[i]
        value = _tensor(value, self.device).to(torch.float32)
        if tuple(value.shape) != shape:
            raise ValueError(f"step {i}'s noise has shape {tuple(value.shape)}, the latents "
                             f"{shape}")
        return value


# ---------------------------------------------------------------- one run per paradigm

def _token_run(loop):
    """A next- or masked-token run of `loop` on class labels or a condition object (see
    `condition_on`); `draws` (e.g. MLX's TokenDraws or Draws, see `replay_mlx_draws`) replaces the
    generator's random numbers."""
    def run(model, labels, plan, *, seed=None, draws=None):
        device = model.head.weight.device
        draws = GeneratorDraws(device, seed) if draws is None else OnDevice(draws, device)
        given = condition_on(labels, device)
        return Sampling(model, plan, lambda m, p: loop(m, given, p, draws, TorchArrays(device)))
    return run


def _diffusion(model, labels, plan, *, seed=None, noise=None, latent_shape=None,
               step_noise=None):
    """`noise` gives the start, else it is drawn from `seed` in `latent_shape`; `step_noise`
    (i, shape) -> step i's standard normal draw (or a sequence) replaces the generator's."""
    device = model.head.weight.device
    given = _tensor(labels, device).long()
    draws = GeneratorDraws(device, seed)
    if noise is None:
        if latent_shape is None:
            raise ValueError("pass the initial noise or the latent shape to draw it in")
        x = draws.normal((given.shape[0], *latent_shape))
    else:
        x = _tensor(noise, device).to(torch.float32)
        if x.shape[0] != given.shape[0]:
            raise ValueError(f"the noise holds {x.shape[0]} latents for {given.shape[0]} labels")
    steps = draws if step_noise is None else ReplayedSteps(step_noise, device)
    solve = diffusion.solver_of(plan)

    def loop(m, p):
        for latents, _ in solve(m, given, p, x, steps, TorchArrays(device)):
            yield latents

    return Sampling(model, plan, loop)


RUNS = {"next-token": _token_run(next_token.decode),
        "masked-token": _token_run(masked_token.unmask),
        "diffusion": _diffusion}
FINAL = {"next-token": lambda steps: torch.cat(steps, dim=1),
         "masked-token": lambda steps: steps[-1].tokens, "diffusion": lambda steps: steps[-1]}


def iterate(model, labels, plan, *, seed: int | None = None, **kwargs) -> Sampling:
    """The torch run of `plan`'s paradigm on the torch mirror `model` (`backbone.from_mlx`)."""
    return RUNS[paradigm_of(plan)](model, labels, plan, seed=seed, **kwargs)


def generate(model, labels, plan, *, seed: int | None = None, **kwargs):
    """Final codes (B, N) or latents (B, H, W, C), and the number of model calls it took."""
    run = iterate(model, labels, plan, seed=seed, **kwargs)
    return FINAL[paradigm_of(plan)](list(run)), run.forward_passes


# ---------------------------------------------------------------- MLX's draws, replayed

def replay_mlx_draws(plan, seed: int | None, batch: int, first_index: int = 0):
    """The draws of MLX's next- or masked-token run with `seed` for images `first_index`, ...:
    passed as `draws=`, they make a torch run replay that MLX run's random numbers."""
    keys = image_keys(batch, seed=seed, first=first_index)
    if paradigm_of(plan) == "next-token":
        return next_token.TokenDraws(keys, plan.num_tokens)
    return masked_token.Draws(keys, plan.steps)


def replay_mlx_noise(plan, seed: int | None, shape: tuple, first_index: int = 0):
    """The initial noise and the step noise that MLX's diffusion sampler draws for `seed` and
    latents of `shape` (B, H, W, C), the batch being images `first_index`, ... of the run (see
    `diffusion.Noise`), as torch tensors: passed as `noise=` and `step_noise=`, they make a
    torch run replay that MLX run's random numbers."""
    draws = diffusion.Noise(image_keys(shape[0], seed=seed, first=first_index),
                            diffusion.random_steps(plan))
    return to_torch(draws.start(shape[1:])), lambda i, step_shape: to_torch(
        draws.step(i, step_shape))
