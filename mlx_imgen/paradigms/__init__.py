"""Sampling loops of the three paradigms, written against the backbone interface.

SAMPLERS maps each plan type to the module of its paradigm; every module has `iterate`,
`generate` and a loop body written against the array namespace of arrays.py.
"""

from . import diffusion, masked_token, next_token
from .diffusion import Dopri5Plan, DPMSolverPlan, FlowPlan, GaussianPlan, SDEPlan
from .masked_token import MaskedTokenPlan
from .next_token import NextTokenPlan

PARADIGMS = ("next-token", "masked-token", "diffusion")
SAMPLERS = {NextTokenPlan: next_token, MaskedTokenPlan: masked_token,
            **{plan: diffusion for plan in diffusion.PLANS}}

__all__ = ["diffusion", "masked_token", "next_token", "FlowPlan", "MaskedTokenPlan", "iterate",
           "generate", "paradigm_of", "sampler_of", "SAMPLERS", "NextTokenPlan", "PARADIGMS",
           "Dopri5Plan", "DPMSolverPlan", "GaussianPlan", "SDEPlan"]


def sampler_of(plan):
    """The paradigm module that samples `plan` (a plan subclass takes its base's)."""
    for kind in type(plan).__mro__:
        if kind in SAMPLERS:
            return SAMPLERS[kind]
    raise TypeError(f"no sampler for plan {type(plan).__name__}")


def iterate(model, labels, plan, *, seed=None, **kwargs):
    """The step iterator of the paradigm that `plan` belongs to."""
    return sampler_of(plan).iterate(model, labels, plan, seed=seed, **kwargs)


def generate(model, labels, plan, *, seed=None, on_step=None, **kwargs):
    """Final codes (B, N) or latents (B, H, W, C); `on_step(done, total)` reports progress."""
    return sampler_of(plan).generate(model, labels, plan, seed=seed, on_step=on_step, **kwargs)


def paradigm_of(plan) -> str:
    return sampler_of(plan).PARADIGM
