"""The torch side of `profile --reference torch`: the same workload, weights and sampling plan
(and for diffusion MLX's noise), timed like `mlx_imgen.profiling.profile_workload` and reported
with the same record fields.

Warm-up runs are excluded; on CUDA every step ends with `torch.cuda.synchronize` (on MPS with
`torch.mps.synchronize`), so a step's time covers its kernels. Model calls are counted, not
inferred from the plan.
"""

import dataclasses
import os
import platform
import time
from typing import Callable

from mlx_imgen.paradigms import Dopri5Plan, GaussianPlan, SDEPlan
from mlx_imgen.profiling import Workload, _cpu_name, record_identity, summarize_runs, timed_runs

from . import pick_device, require_torch
from .backbone import from_mlx
from .samplers import iterate, replay_mlx_noise

torch = require_torch()

PEAK_MEMORY_NOTE = "torch reports peak memory on CUDA only (torch.cuda.max_memory_allocated)"


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def device_info(device: str) -> dict:
    """Framework, device, torch version and threads, for the reference record. `ld_preload`
    matters on CPU: a BLAS preloaded for MLX also serves some of torch's matmuls, and its
    thread pool competes with torch's."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
    elif device == "mps":
        name = f"Apple GPU (MPS), {platform.machine()}"
    else:
        name = _cpu_name()
    return {"framework": "torch", "device": device, "device_name": name,
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
            "ld_preload": os.environ.get("LD_PRELOAD") or None}


def _run_once(model, work: Workload, labels, max_steps: int, seed: int, device: str,
              decode=None) -> dict:
    """One timed generation of the torch mirror; the loop stops after `max_steps` steps."""
    kwargs = _mlx_noise(work.plan, seed, (labels.shape[0], *work.latent_shape), device) \
        if work.latent_shape else {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        conditioning = model.class_embed(labels)
    _synchronize(device)
    del conditioning
    t1 = time.perf_counter()
    run = iterate(model, labels, work.plan, seed=seed, **kwargs)
    step_times, last, start = [], None, t1
    for i, last in enumerate(run):
        _synchronize(device)
        now = time.perf_counter()
        step_times.append(now - start)
        start = now
        if i + 1 >= max_steps:
            break
    decode_s = 0.0
    if decode is not None:
        # as the MLX harness: decoding costs the same whatever the codes are, so a loop cut
        # short still times the decode of a full-size batch
        samples = last if work.latent_shape else torch.zeros(
            (labels.shape[0], model.config.num_tokens), dtype=torch.long, device=labels.device)
        t2 = time.perf_counter()
        with torch.inference_mode():
            decode(samples)
        _synchronize(device)
        decode_s = time.perf_counter() - t2
    return {"conditioning_s": t1 - t0, "step_times": step_times, "decode_s": decode_s,
            "forward_passes": run.forward_passes, "steps_taken": run.steps_taken}


def _mlx_noise(plan, seed: int, shape: tuple, device: str) -> dict:
    """The initial and step noise of the MLX run with this seed, drawn before the clock
    starts: the torch run then does the MLX run's work (an adaptive solver's step count
    depends on where it starts)."""
    noise, step_noise = replay_mlx_noise(plan, seed, shape)
    kwargs = {"noise": noise.to(device)}
    stochastic = isinstance(plan, SDEPlan) or (
        isinstance(plan, GaussianPlan) and (plan.sampler == "ddpm" or plan.eta > 0))
    if stochastic:
        kwargs["step_noise"] = [step_noise(i, shape) for i in range(plan.steps)]
    return kwargs


def torch_decoder(autoencoder, kind: str | None = None, device: str | None = None,
                  grid: tuple[int, int] | None = None) -> Callable:
    """The torch decode of an MLX autoencoder, built from its configuration and weights on
    `device`: a VQ model's `vq.code_decoder` (codes -> images, `grid` (h, w) for flat codes)
    or a KL-VAE's `kl.latent_decoder` (scaled latents -> images). `kind` is "vq" or "kl"; left
    out, the module's type tells."""
    if kind is None:
        from mlx_imgen.autoencoders import AUTOENCODERS
        kind = next((name for name, known in AUTOENCODERS.items()
                     if isinstance(autoencoder, known.model)), None)
    if kind == "vq":
        from . import vq
        return vq.code_decoder(vq.from_mlx(autoencoder, device), grid)
    if kind == "kl":
        from . import kl
        return kl.latent_decoder(kl.from_mlx(autoencoder, device))
    raise ValueError(f"no torch decoder for autoencoder kind {kind!r} "
                     f"({type(autoencoder).__name__}); use 'vq' or 'kl'")


def profile_reference(work: Workload, batch_size: int, *, trials: int = 3,
                      step_budget_s: float | None = None, seed: int = 0,
                      device: str | None = None, decode=None, torch_model=None,
                      threads: int | None = None, autoencoder=None,
                      autoencoder_kind: str | None = None) -> dict:
    """Measure the torch mirror of `work` at one batch size; fields as profile_workload's, plus
    framework, device, device_name, torch_version, torch_threads and the counted passes.

    `decode` is a torch callable from final codes or latents to images (for a VQ decoder,
    `mlx_imgen.reference.vq.code_decoder`); or `autoencoder`, the MLX VQ model or KL-VAE that
    the workload decodes with (`autoencoder_kind` "vq" or "kl", else read from its type), has
    one built by `torch_decoder`. Without either the decode stage is not timed.
    `torch_model`, the mirror already built on `device` (`backbone.from_mlx`), saves rebuilding
    it for every batch size. `threads` sets torch's intra-op threads for this call only. A
    batch that runs out of memory gives a record with status "out_of_memory" instead of raising.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    device = device or pick_device()
    if autoencoder is not None:
        if decode is not None:
            raise ValueError("pass decode or autoencoder, not both")
        grid = None if work.latent_shape else (work.model.config.grid_size,) * 2
        decode = torch_decoder(autoencoder, autoencoder_kind, device, grid)
    model = torch_model if torch_model is not None else from_mlx(work.model, device)
    previous_threads = torch.get_num_threads()
    if threads is None and device == "cpu" and "openblas" in os.environ.get("LD_PRELOAD", ""):
        # The OpenBLAS preloaded for MLX also serves torch's matmuls with its own threads;
        # torch's intra-op threads on top oversubscribe the cores (measured on the 2-core
        # machine: an S-size forward took 1.8 s with 2 torch threads, 0.27 s with 1).
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(model, work, batch_size, trials, step_budget_s, seed, device, decode)
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not isinstance(err, torch.cuda.OutOfMemoryError) \
                and "out of memory" not in str(err).lower():
            raise
        peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        return {**record_identity(work, batch_size, decode=decode is not None),
                "status": "out_of_memory",
                "error": str(err).split("\n")[0], "peak_memory_gb": peak,
                **_peak_note(peak), **device_info(device)}
    finally:
        torch.set_num_threads(previous_threads)


def _peak_note(peak) -> dict:
    return {} if peak is not None else {"peak_memory_note": PEAK_MEMORY_NOTE}


def _measure(model, work: Workload, batch_size: int, trials: int, step_budget_s, seed: int,
             device: str, decode) -> dict:
    plan = work.plan
    labels = torch.arange(batch_size, device=device) % model.config.num_classes
    adaptive = isinstance(plan, Dopri5Plan)

    def reset_peak():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    runs, total_steps = timed_runs(
        lambda steps: _run_once(model, work, labels, steps, seed, device, decode), plan.steps,
        trials, step_budget_s, adaptive, reset_peak)
    first = runs[0]
    if adaptive:  # the counts of this run, not of the MLX run the plan recorded
        plan = dataclasses.replace(plan, steps_taken=first["steps_taken"],
                                   passes_used=first["forward_passes"])
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
    record = record_identity(work, batch_size, plan=plan, decode=decode is not None)
    timing = summarize_runs(runs, total_steps, batch_size, record["gflops_per_image"],
                            num_tokens=plan.num_tokens if work.paradigm == "next-token" else None,
                            has_decode=decode is not None)
    if not timing["extrapolated"]:  # counted, not taken from the plan
        guidance = 2 if plan.cfg_scale != 1.0 else 1
        record["forward_passes_per_image"] = first["forward_passes"] * guidance
    return {
        **record, "status": "ok", **timing,
        "forward_passes_source": "plan (the timed loop was cut short)" if timing["extrapolated"]
        else "counted",
        "forward_passes_counted": first["forward_passes"],
        "peak_memory_gb": peak, **_peak_note(peak),
        "trials": trials,
        **device_info(device),
    }
