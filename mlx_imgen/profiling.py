"""The measurement harness: stage times, latency, throughput, peak memory and FLOPs of a workload.

Warm-up runs are excluded, every stage is synchronised with `mx.eval`, and latency statistics
are median, min and max over the trials. A sampling loop cut short by the step budget is timed
per step and extrapolated to the full plan, and the record says so.
"""

import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import blas
from .flops import plan_flops
from .paradigms import iterate, paradigm_of

SCHEMA_VERSION = 1
FLOPS_CONVENTION = ("FLOPs = 2 x multiply-accumulates of linear layers, convolutions and the "
                    "attention matmuls (QK^T, AV); elementwise ops, norms, softmax and embedding "
                    "lookups are left out; per-sample layers count once per sample.")


@dataclass
class Workload:
    """A model with its sampling plan, as one row family of the report."""
    name: str
    model: nn.Module
    plan: object
    size: str | None = None
    latent_shape: tuple | None = None                 # diffusion only
    decode: Callable[[mx.array], mx.array] | None = None
    decode_flops_per_image: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def paradigm(self) -> str:
        return paradigm_of(self.plan)


def parameter_count(model: nn.Module) -> int:
    return sum(v.size for _, v in tree_flatten(model.parameters()))


def model_dtype(model: nn.Module) -> str:
    return str(model.head.weight.dtype).replace("mlx.core.", "")


def device_info() -> dict:
    device = mx.default_device()
    info = {"device": str(device), "backend": "cpu" if device.type == mx.cpu else "gpu",
            "mlx_version": mx.__version__, "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "blas": blas.describe()}
    if device.type == mx.gpu:
        try:
            gpu = mx.device_info()
            info["gpu"] = gpu.get("device_name") or gpu.get("architecture")
        except Exception:  # noqa: BLE001 - device_info is best-effort across backends
            pass
        info["backend"] = "metal" if mx.metal.is_available() else "cuda"
    info["processor"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run_once(work: Workload, labels: mx.array, max_steps: int, seed: int) -> dict:
    """One timed generation; the loop stops after `max_steps` steps."""
    t0 = time.perf_counter()
    conditioning = work.model.class_embed(labels)
    mx.eval(conditioning)
    t1 = time.perf_counter()
    step_times, last, start = [], None, t1
    kwargs = {"latent_shape": work.latent_shape} if work.latent_shape else {}
    for i, last in enumerate(iterate(work.model, labels, work.plan, seed=seed, **kwargs)):
        now = time.perf_counter()
        step_times.append(now - start)
        start = now
        if i + 1 >= max_steps:
            break
    decode_s = 0.0
    if work.decode is not None and len(step_times) == work.plan.steps:
        samples = last.tokens if hasattr(last, "tokens") else last
        t2 = time.perf_counter()
        mx.eval(work.decode(samples))
        decode_s = time.perf_counter() - t2
    return {"conditioning_s": t1 - t0, "step_times": step_times, "decode_s": decode_s}


def profile_workload(work: Workload, batch_size: int, *, trials: int = 3,
                     step_budget_s: float | None = None, seed: int = 0) -> dict:
    """Measure one workload at one batch size. `step_budget_s` caps each trial's loop time."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    plan = work.plan
    total_steps = plan.steps
    labels = mx.arange(batch_size, dtype=mx.int32) % work.model.config.num_classes
    _run_once(work, labels, 1, seed)  # warm-up: allocations and kernel set-up, not reported
    mx.reset_peak_memory()
    first = _run_once(work, labels, total_steps, seed) if step_budget_s is None else None
    if first is None:
        # the first trial finds how many steps fit in the budget; the others reuse that count
        first = _budgeted_run(work, labels, total_steps, step_budget_s, seed)
    measured = len(first["step_times"])
    runs = [first] + [_run_once(work, labels, measured, seed) for _ in range(trials - 1)]
    peak = mx.get_peak_memory()
    extrapolated = measured < total_steps
    latencies, loops = [], []
    for run in runs:
        loop = sum(run["step_times"]) * total_steps / measured
        loops.append(loop)
        latencies.append(run["conditioning_s"] + loop + run["decode_s"])
    latency = statistics.median(latencies)
    flops = plan_flops(work.model.config, plan)
    per_image = flops.total + work.decode_flops_per_image
    return {
        "model": work.name, "paradigm": work.paradigm, "size": work.size,
        "parameters": parameter_count(work.model), "dtype": model_dtype(work.model),
        "batch_size": batch_size, "steps": total_steps, "measured_steps": measured,
        "extrapolated": extrapolated,
        "forward_passes_per_image": plan.forward_passes() * (2 if plan.cfg_scale != 1.0 else 1),
        "cfg_scale": plan.cfg_scale,
        "gflops_per_image": per_image / 1e9,
        "gflops_breakdown": {"transformer_linear": flops.linear / 1e9,
                             "transformer_attention": flops.attention / 1e9,
                             "decode": work.decode_flops_per_image / 1e9},
        "latency_s": {"median": latency, "min": min(latencies), "max": max(latencies)},
        "images_per_s": batch_size / latency,
        "peak_memory_gb": peak / 1e9,
        "achieved_gflops_per_s": per_image * batch_size / latency / 1e9,
        "stages_s": {
            "conditioning": statistics.median(r["conditioning_s"] for r in runs),
            "sampling": statistics.median(loops),
            "per_step": statistics.median(loops) / total_steps,
            "decode": statistics.median(r["decode_s"] for r in runs) if work.decode else None,
        },
        "trials": trials,
        **work.extra,
    }


def _budgeted_run(work: Workload, labels, total_steps: int, budget_s: float, seed: int) -> dict:
    """A trial whose loop stops after the first step that takes it past `budget_s`."""
    probe = _run_once(work, labels, 1, seed)
    per_step = max(probe["step_times"][0], 1e-6)
    steps = max(1, min(total_steps, int(budget_s / per_step)))
    return _run_once(work, labels, steps, seed)


def report(results: list[dict], *, settings: dict | None = None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": device_info(),
        "flops_convention": FLOPS_CONVENTION,
        "settings": settings or {},
        "results": results,
    }
