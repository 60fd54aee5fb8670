"""Sampling loops of the three paradigms, written against the backbone interface."""

from . import diffusion, masked_token, next_token
from .diffusion import Dopri5Plan, FlowPlan, GaussianPlan, SDEPlan
from .masked_token import MaskedTokenPlan
from .next_token import NextTokenPlan

PARADIGMS = ("next-token", "masked-token", "diffusion")

__all__ = ["diffusion", "masked_token", "next_token", "FlowPlan", "MaskedTokenPlan", "iterate", "generate", "paradigm_of",
           "NextTokenPlan", "PARADIGMS", "Dopri5Plan", "GaussianPlan", "SDEPlan"]


def _module(plan):
    for plan_type, module in ((NextTokenPlan, next_token), (MaskedTokenPlan, masked_token),
                              (diffusion.PLANS, diffusion)):
        if isinstance(plan, plan_type):
            return module
    raise TypeError(f"no sampler for plan {type(plan).__name__}")


def iterate(model, labels, plan, *, seed=None, **kwargs):
    """The step iterator of the paradigm that `plan` belongs to."""
    return _module(plan).iterate(model, labels, plan, seed=seed, **kwargs)


def generate(model, labels, plan, *, seed=None, on_step=None, **kwargs):
    """Final codes (B, N) or latents (B, H, W, C); `on_step(done, total)` reports progress."""
    return _module(plan).generate(model, labels, plan, seed=seed, on_step=on_step, **kwargs)


def paradigm_of(plan) -> str:
    if isinstance(plan, diffusion.PLANS):
        return "diffusion"
    return {NextTokenPlan: "next-token", MaskedTokenPlan: "masked-token"}[type(plan)]
