"""Adaptive Dormand-Prince 5(4) on the flow ODE (SiT's "dopri5" sampler).

Written from Hairer, Norsett & Wanner, Solving Ordinary Differential Equations I, II.4-II.6:
the explicit 7-stage tableau whose last stage is the next step's first, the scaled error
norm, the step-size rule and the starting-step heuristic. A run may step past its end time;
the state at the end is then read from the quartic continuous extension inside that step.
"""

from dataclasses import dataclass
from typing import Callable, Iterator

from ..arrays import MLX, rms
from ..guidance import doubled
from .common import guided_prediction
from .plans import Dopri5Plan

# ---------------------------------------------------------------- the tableau (constants)
# NODES[i] is stage i's time fraction and COUPLING[i] its weights on the earlier stages'
# slopes; the last row is also the 5th-order solution's weights.
NODES = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
COUPLING = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# 5th- minus 4th-order weights over the seven slopes: the local error estimate. The 4th-order
# set is the one SiT's reference solver embeds, so step counts match upstream's runs.
ERROR = (35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
         -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60)
# weights of the 4th-order solution at the step's midpoint (Shampine's dense output)
MIDPOINT = tuple(c / 2 for c in (6025192743 / 30085553152, 0.0, 51252292925 / 65400821598,
                                 -2691868925 / 45128329728, 187940372067 / 1594534317056,
                                 -1776094331 / 19743644256, 11237099 / 235043384))
ORDER = 4  # of the embedded solution: the error shrinks as h ** (ORDER + 1)


def _weighted(weights, slopes):
    """sum(w * k) over the non-zero weights, in stage order."""
    total = None
    for w, k in zip(weights, slopes):
        if w:
            total = w * k if total is None else total + w * k
    return total


@dataclass(frozen=True)
class StepSizeRule:
    """h_new = h * clamp(safety * err ** (-1 / (ORDER + 1)), lower, grow): the step that would
    have met the tolerance, with a safety margin. After an accepted step the lower bound is 1,
    so a step that met the tolerance never shrinks the next; after a rejection it is `shrink`."""
    safety: float = 0.9
    grow: float = 10.0
    shrink: float = 0.2

    def next(self, h: float, err: float) -> float:
        if err == 0:
            return h * self.grow
        lower = 1.0 if err < 1 else self.shrink
        return h * min(self.grow, max(lower, self.safety * err ** (-1 / (ORDER + 1))))


def starting_step(f, t0: float, y0, f0, atol: float, rtol: float, xp=MLX) -> float:
    """The first step size from the sizes of y0, of its slope and of the slope's change over
    a tiny explicit Euler step (one extra evaluation of f), HNW's heuristic: a step of about
    1% of y0's scale along the slope, capped where the second-order term would reach 1%."""
    scale = atol + rtol * xp.abs(y0)
    size, slope = rms(y0 / scale, xp), rms(f0 / scale, xp)
    probe = 1e-6 if min(size, slope) < 1e-5 else 0.01 * size / slope
    curvature = rms((f(y0 + probe * f0, t0 + probe) - f0) / scale, xp) / probe
    steepest = max(slope, curvature)
    if steepest <= 1e-15:
        capped = max(1e-6, probe * 1e-3)
    else:
        capped = (0.01 / steepest) ** (1.0 / (ORDER + 1))
    return min(100 * probe, capped)


def _continuous(y0, y1, mid, f0, f1, h: float, theta: float):
    """The quartic through y0 (theta 0), mid (1/2) and y1 (1) with slopes h f0 and h f1: the
    cubic Hermite interpolant plus the multiple of theta^2 (1 - theta)^2 that meets mid."""
    hermite_mid = 0.5 * (y0 + y1) + (h / 8) * (f0 - f1)
    s, u = theta, 1 - theta
    hermite = (u * u * (1 + 2 * s)) * y0 + (s * s * (3 - 2 * s)) * y1 \
        + (h * s * u * u) * f0 - (h * s * s * u) * f1
    return hermite + (16 * s * s * u * u) * (mid - hermite_mid)


RULE = StepSizeRule()


def dopri5(f: Callable, y, t0: float = 0.0, t1: float = 1.0, *, atol: float = 1e-6,
           rtol: float = 1e-3, max_steps: int = 1000, stats: dict | None = None,
           xp=MLX) -> Iterator[tuple]:
    """Integrate dy/dt = f(y, t) from t0 to t1 > t0; yield (y, t) after each accepted step,
    the last one y(t1) from the continuous extension. `stats` receives "steps" (accepted
    and rejected) and "evals" (calls of f)."""
    stats = {} if stats is None else stats
    stats.update(steps=0, evals=0)

    def evaluate(state, t):
        stats["evals"] += 1
        return f(state, t)

    t, slope = t0, evaluate(y, t0)
    h = starting_step(evaluate, t0, y, slope, atol, rtol, xp)
    while True:
        if stats["steps"] >= max_steps:
            raise ValueError(f"dopri5 took {max_steps} steps without reaching t={t1} (at "
                             f"t={t:.4f}); raise max_steps or loosen atol/rtol")
        slopes = [slope]
        for node, row in zip(NODES, COUPLING):
            stage = y + h * _weighted(row, slopes)
            slopes.append(evaluate(stage, t + node * h))
        y_new = stage  # the last stage is the 5th-order solution
        scale = atol + rtol * xp.maximum(xp.abs(y), xp.abs(y_new))
        err = rms(h * _weighted(ERROR, slopes) / scale, xp)
        stats["steps"] += 1
        if err <= 1 and t + h >= t1:
            mid = y + h * _weighted(MIDPOINT, slopes)
            end = _continuous(y, y_new, mid, slope, slopes[-1], h, (t1 - t) / h)
            xp.eval(end)
            yield end, t1
            return
        if err <= 1:
            y, slope, t = y_new, slopes[-1], t + h
            xp.eval(y, slope)
            yield y, t
        h = RULE.next(h, err)


def trajectory(model, labels, plan: Dopri5Plan, x, noise, xp=MLX) -> Iterator:
    """Accepted steps with the fraction of time covered; a completed run records its steps
    and model calls in the plan. Under CFG the state is upstream SiT's [x, x], so the error spans both."""
    batch, mirror = x.shape[0], plan.cfg_scale != 1.0
    predict = guided_prediction(model, labels, plan.cfg_scale, plan.time_scale, x.shape[-1],
                                plan.guided_channels, upstream_batch=mirror, xp=xp)
    if plan.t_noise == 0.0:
        f = predict
    else:  # integrate s = 1 - t upwards, so the solver always moves forward in time
        def f(y, s):
            return -predict(y, 1.0 - s)
    stats = {}
    for y, t in dopri5(f, doubled(x, xp) if mirror else x, 0.0, 1.0, atol=plan.atol,
                       rtol=plan.rtol, max_steps=plan.max_steps, stats=stats, xp=xp):
        yield y[:batch], t
    plan.steps_taken, plan.passes_used = stats["steps"], stats["evals"]
