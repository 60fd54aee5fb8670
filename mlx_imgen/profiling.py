"""The measurement harness: stage times, latency, throughput, peak memory and FLOPs of a workload.

Warm-up runs are excluded, every stage is synchronised with `mx.eval`, and latency statistics
are median, min and max over the trials. Each step is waited for before the clock reads it,
the last one included. A sampling loop cut short by the step budget (never below `min_steps`
steps) is timed per step and extrapolated to the full plan, and the record says so; `step_s`
gives the min, median and max of every timed step.
"""

import dataclasses
import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import blas
from .devices import copy_bandwidth, cpu_name, datasheet_peak, measured_cpu_peak
from .flops import plan_flops, text_encoder_flops
from .paradigms import iterate, paradigm_of
from .paradigms.next_token import TextPrefix
from .text.stand_in import StandInText

SCHEMA_VERSION = 1  # bump on any incompatible change of the report layout (see README)
# The report layout (schema_version 1); README "Report schema" documents each field.
REPORT_FIELDS = ("schema_version", "created", "environment", "flops_convention", "settings",
                 "results", "findings")
RECORD_FIELDS = ("model", "paradigm", "size", "parameters", "dtype", "batch_size", "steps",
                 "forward_passes_per_image", "cfg_scale", "gflops_per_image", "gflops_breakdown",
                 "status", "measured_steps", "extrapolated", "latency_s", "images_per_s",
                 "peak_memory_gb", "achieved_gflops_per_s", "stages_s", "trials")
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
    autoencoder: nn.Module | None = None              # lets the torch reference mirror decode
    extra: dict = field(default_factory=dict)
    # a text-prefixed model's prompt length in tokens (template and BOS included): each image
    # is conditioned on a stand-in prompt of this length; 0 for class-conditioned models
    prompt_tokens: int = 0
    # a cross-attention text model's encoder (aMUSEd's CLIP tower, Sana's Gemma-2): each image
    # is conditioned on a stand-in prompt laid out by `stand_in_text` (the family's:
    # (text encoder, batch) -> text.stand_in.StandInText), encoded in the conditioning time
    text_encoder: nn.Module | None = None
    stand_in_text: Callable | None = None
    # decode at most this many images per run and scale its time to the batch (a decode costs
    # the same per image; a 384-px VQ decode takes 15 s on a 2-core CPU); None decodes all
    decode_images: int | None = None

    @property
    def paradigm(self) -> str:
        return paradigm_of(self.plan)


def parameter_count(model: nn.Module) -> int:
    """Logical parameters: a quantized weight counts its unpacked elements, not scales/biases."""
    bits = {path: m.bits for path, m in model.named_modules()
            if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
    total = 0
    for path, value in tree_flatten(model.parameters()):
        module, leaf = path.rsplit(".", 1) if "." in path else ("", path)
        if module not in bits:
            total += value.size
        elif leaf == "weight":
            total += value.size * 32 // bits[module]
        elif leaf not in ("scales", "biases"):
            total += value.size
    return total


def decode_weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters one next-token decode step reads: every weight in full, but of each
    embedding table (image codes, text, class labels) one row only: a step looks up the one
    code it feeds back, and the prefix was embedded by the prefill."""
    tables = {path for path, m in model.named_modules()
              if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding))}
    total = 0
    for path, value in tree_flatten(model.parameters()):
        module = path.rsplit(".", 1)[0] if "." in path else ""
        total += value.nbytes // value.shape[0] if module in tables else value.nbytes
    return total


def add_bandwidth_bound(results: list[dict], bandwidth_gbs: float | None) -> None:
    """For each next-token record at batch 1: the decode's bound (the weight bytes one token
    reads over the memory bandwidth) and the achieved fraction of it (bound / measured time per
    token; 1 would be a decode that does nothing but stream its weights once)."""
    for r in results:
        per_token = (r.get("stages_s") or {}).get("per_token_decode")
        if (r.get("status") != "ok" or r["batch_size"] != 1 or not per_token
                or not bandwidth_gbs or not r.get("weight_bytes_per_token")):
            continue
        bound = r["weight_bytes_per_token"] / (bandwidth_gbs * 1e9)
        r["bandwidth_bound_s_per_token"] = bound
        r["bandwidth_fraction"] = bound / per_token


def _wants_bandwidth(results: list[dict]) -> bool:
    return any(r.get("status") == "ok" and r["batch_size"] == 1 and r.get("weight_bytes_per_token")
               for r in results)


def model_dtype(model: nn.Module) -> str:
    return str(model.dtype).replace("mlx.core.", "")


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
    info["processor"] = cpu_name()
    return info


class OutOfMemory(RuntimeError):
    """A run needed more memory than the device (or the configured limit) allows."""


class Framework:
    """What `measure` needs of the framework that runs a workload: MLX's is `MLXFramework`
    below, torch's `mlx_imgen.reference.profiling.TorchFramework`. The measurement flow (warm-up,
    trials, step budget, out-of-memory records, summary) is `measure`'s, the same for both."""
    oom_types: tuple = (MemoryError,)   # errors that always mean out of memory
    oom_words: tuple = ("out of memory",)  # a RuntimeError saying one of these means it too
    peak_memory_note: str | None = None   # why `peak_gb` may be None
    decodes = False                        # whether `decode` times a decode stage

    def out_of_memory(self, err: Exception) -> bool:
        text = str(err).lower()
        return isinstance(err, self.oom_types) or any(w in text for w in self.oom_words)

    def check_memory(self) -> None:
        """Raise OutOfMemory where the framework does not enforce a limit itself."""

    def info(self) -> dict:
        """Record fields that name the framework and device (none for MLX: the report's
        environment names them)."""
        return {}


class MLXFramework(Framework):
    """MLX's side of `measure`: the loops evaluate their own steps (asynchronously where they
    can), so only the conditioning and the decode are synchronised here with `mx.eval`."""
    oom_types = (OutOfMemory, MemoryError)
    oom_words = ("out of memory", "allocate", "memory limit", "malloc")

    def __init__(self, work: Workload, memory_limit: int | None):
        self.work, self.memory_limit, self.decodes = work, memory_limit, work.decode is not None

    def labels(self, batch_size: int):
        config = self.work.model.config
        if self.work.text_encoder is not None:
            return self.work.stand_in_text(self.work.text_encoder, batch_size)
        if self.work.prompt_tokens:
            return stand_in_prompts(config, batch_size, self.work.prompt_tokens)
        return mx.arange(batch_size, dtype=mx.int32) % config.num_classes

    def embed(self, labels):
        # a text prefix is embedded by the loop's prefill (its first step): nothing to time here
        if isinstance(labels, TextPrefix):
            return labels.ids
        # each run encodes its stand-in prompts anew, so the conditioning time is the encoder's
        if isinstance(labels, StandInText):
            encoded = labels.encode()
            return [x for x in (encoded.states, encoded.pooled, encoded.null_states,
                                encoded.null_pooled, encoded.mask, encoded.null_mask)
                    if x is not None]
        return self.work.model.class_embed(labels)

    def sampling(self, labels: mx.array, seed: int) -> Callable[[], Iterator]:
        work = self.work
        kwargs = {"latent_shape": work.latent_shape} if work.latent_shape else {}
        # started after `embed`: a stand-in text's condition is the encoding that timed
        condition = (lambda: labels.encoded) if isinstance(labels, StandInText) else \
            (lambda: labels)
        return lambda: iterate(work.model, condition(), work.plan, seed=seed, **kwargs)

    def step_done(self, value) -> None:
        # the loops evaluate their own steps; this waits for whatever a loop left queued, so
        # the clock never reads before the step it times is computed
        mx.eval(value)

    def decode(self, samples: mx.array) -> mx.array:
        return self.work.decode(samples)

    def zero_codes(self, shape: tuple) -> mx.array:
        return mx.zeros(shape, dtype=mx.int32)

    def sync(self, value) -> None:
        mx.eval(value)

    def check_memory(self) -> None:
        # The CPU backend does not enforce mx.set_memory_limit, so the harness checks the peak.
        limit = self.memory_limit
        if limit is not None and mx.get_peak_memory() > limit:
            raise OutOfMemory(f"peak memory {mx.get_peak_memory() / 1e9:.2f} GB exceeded the "
                              f"limit of {limit / 1e9:.2f} GB")

    def reset_peak(self) -> None:
        mx.reset_peak_memory()

    def peak_gb(self) -> float:
        return mx.get_peak_memory() / 1e9

    def release(self) -> None:
        mx.clear_cache()


# a text-prefixed model's (Janus-Pro's) stand-in prompt in tokens, template included
PROFILE_PROMPT_TOKENS = 32


def pipeline_workload(pipe, name: str, plan, *, random_weights: bool = False) -> Workload:
    """A loaded Pipeline as a profile workload: its transformer and plan, its decoder, and its
    text conditioning (a text prefix (Janus-Pro) is part of the transformer's sequence, a
    cross-attended text (aMUSEd, Sana) comes from the pipeline's own text encoder)."""
    cfg = pipe.config
    prefixed = getattr(cfg, "conditioning", None) == "text"
    return Workload(name=name, model=pipe.transformer, plan=plan,
                    latent_shape=pipe.latent_shape, decode=pipe.decode_samples,
                    autoencoder=pipe.autoencoder,
                    decode_flops_per_image=pipe.decode_flops_per_image(),
                    prompt_tokens=PROFILE_PROMPT_TOKENS if prefixed else 0,
                    text_encoder=pipe.text_encoder, stand_in_text=pipe.family.stand_in_text,
                    extra={"random_weights": random_weights,
                           "quantization": pipe.index.get("quantization")})


def stand_in_prompts(config, batch_size: int, length: int) -> TextPrefix:
    """`batch_size` distinct prompts of `length` text token ids (fixed, spread over the
    vocabulary) and unconditional rows of the same length: what a profile conditions on."""
    rows = mx.arange(batch_size, dtype=mx.int32)[:, None] * 7919
    ids = (rows + mx.arange(length, dtype=mx.int32)[None] * 104729) % config.text_vocab_size
    return TextPrefix(ids, mx.zeros_like(ids))


def condition_batch(labels) -> int:
    """The number of images a profile's condition (class labels, a TextPrefix or stand-in
    text) asks for."""
    return labels.batch if isinstance(labels, (TextPrefix, StandInText)) else labels.shape[0]


# a next-token loop cut short by the step budget is timed over at least its prefill and this
# many decode steps, so that the time per token it is extrapolated from is a decode step's
NEXT_TOKEN_MIN_DECODE_STEPS = 5


def check_sizes(batch_size: int, trials: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")


def profile_workload(work: Workload, batch_size: int, *, trials: int = 3,
                     step_budget_s: float | None = None, seed: int = 0,
                     memory_limit: int | None = None, min_steps: int = 1) -> dict:
    """Measure one workload at one batch size. `step_budget_s` caps each trial's loop time,
    but each trial times at least `min_steps` steps (or the whole plan, if shorter).

    A batch that runs out of memory (or past `memory_limit` bytes) gives a record with status
    "out_of_memory" instead of raising, so a sweep over batch sizes can go on.
    """
    check_sizes(batch_size, trials)
    previous_limit = mx.set_memory_limit(memory_limit) if memory_limit else None
    try:
        return measure(MLXFramework(work, memory_limit), work, batch_size, trials,
                       step_budget_s, seed, min_steps)
    finally:
        if previous_limit is not None:
            mx.set_memory_limit(previous_limit)


def text_work(work: Workload) -> tuple[float, int]:
    """A cross-attention text model's text-encoder FLOPs per image (its stand-in prompt's rows,
    the unconditional one included: the profile encodes both) and the number of text states
    its transformer attends to; (0, 0) for other models."""
    if work.text_encoder is None:
        return 0.0, 0
    stand_in = work.stand_in_text(work.text_encoder, 1)  # ids only: nothing is encoded
    config = work.text_encoder.config
    return (sum(text_encoder_flops(config, n) for n in stand_in.row_lengths),
            stand_in.context_length)


def record_identity(work: Workload, batch_size: int, *, plan=None,
                    decode: bool | None = None) -> dict:
    """The record's fields that do not depend on timing; `plan` stands in for the workload's
    (a torch run's own adaptive counts), `decode` says whether the decode stage is timed."""
    plan = plan or work.plan
    text_flops, caption = text_work(work)
    flops = plan_flops(work.model.config, plan, work.prompt_tokens or caption)
    decoding = work.decode is not None if decode is None else decode
    decode_flops = work.decode_flops_per_image if decoding else 0.0
    return {
        "model": work.name, "paradigm": work.paradigm, "size": work.size,
        "parameters": parameter_count(work.model), "dtype": model_dtype(work.model),
        "batch_size": batch_size, "steps": plan.steps,
        "forward_passes_per_image": plan.forward_passes() * (2 if plan.cfg_scale != 1.0 else 1),
        "cfg_scale": plan.cfg_scale,
        **({"prompt_tokens": work.prompt_tokens} if work.prompt_tokens else {}),
        **({"decode_images": work.decode_images} if decoding and work.decode_images else {}),
        **({"weight_bytes_per_token": decode_weight_bytes(work.model)}
           if work.paradigm == "next-token" else {}),
        "gflops_per_image": (flops.total + text_flops + decode_flops) / 1e9,
        "gflops_breakdown": {"transformer_linear": flops.linear / 1e9,
                             "transformer_attention": flops.attention / 1e9,
                             **({"text_encoder": text_flops / 1e9} if text_flops else {}),
                             "decode": decode_flops / 1e9},
        **work.extra,
    }


def timed_runs(run_once: Callable[[int], dict], total_steps: int, trials: int,
               step_budget_s: float | None, adaptive: bool,
               after_warmup: Callable[[], None] = lambda: None,
               min_steps: int = 1) -> tuple[list[dict], int]:
    """A warm-up run (allocations, kernel set-up; not reported), then `trials` runs of
    `run_once(max_steps)`, each returning conditioning_s, step_times and decode_s; with the
    plan's step count, or fewer that fit in `step_budget_s` (sized by one step run without the
    decode, found by the first trial, reused by the others) but never fewer than `min_steps`.
    An adaptive solver learns its step count only by finishing, so it warms up
    with a full run and is never cut short; its loop yields accepted steps only. Returns the
    runs and the number of steps a full loop takes. MLX and the torch reference share it."""
    warm = run_once(1 << 30 if adaptive else 1)
    if adaptive:
        step_budget_s, total_steps = None, len(warm["step_times"])
    after_warmup()
    if step_budget_s is None:
        first = run_once(total_steps)
    else:
        per_step = max(run_once(1, decode=False)["step_times"][0], 1e-6)
        fit = max(1, min_steps, int(step_budget_s / per_step))
        first = run_once(min(total_steps, fit))
    measured = len(first["step_times"])
    return [first] + [run_once(measured) for _ in range(trials - 1)], total_steps


def _run_once(framework, work: Workload, labels, max_steps: int, seed: int,
              decode: bool = True) -> dict:
    """One timed generation; the loop stops after `max_steps` steps; `decode` False leaves the
    decode out (a run that only sizes the step budget)."""
    start_sampling = framework.sampling(labels, seed)  # whatever it draws, before the clock
    t0 = time.perf_counter()
    framework.sync(framework.embed(labels))
    t1 = time.perf_counter()
    run = start_sampling()
    step_times, last, start = [], None, t1
    for i, last in enumerate(run):
        framework.step_done(last)
        now = time.perf_counter()
        step_times.append(now - start)
        start = now
        if i + 1 >= max_steps:
            break
    if hasattr(run, "close"):
        run.close()  # a loop stopped early finishes its queued work here, off the clock
    decode_s = 0.0
    if framework.decodes and decode:
        # decoding costs the same whatever the codes are, so a loop cut short by the step
        # budget still times the decode of a full-size batch
        images = condition_batch(labels)
        count = min(images, work.decode_images or images)
        samples = last[:count] if work.latent_shape else \
            framework.zero_codes((count, work.model.config.num_tokens))
        t2 = time.perf_counter()
        framework.sync(framework.decode(samples))
        decode_s = (time.perf_counter() - t2) * images / count
    # a loop that counts its model calls (the torch reference's) gives them, MLX's give None
    return {"conditioning_s": t1 - t0, "step_times": step_times, "decode_s": decode_s,
            "forward_passes": getattr(run, "forward_passes", None),
            "steps_taken": getattr(run, "steps_taken", None)}


def measure(framework: Framework, work: Workload, batch_size: int, trials: int,
            step_budget_s: float | None, seed: int, min_steps: int = 1) -> dict:
    """The record of `work` at one batch size, run by `framework` (see `timed_runs`); a batch
    that runs out of memory gives a record with status "out_of_memory" instead of raising."""
    plan = work.plan
    adaptive = hasattr(plan, "passes_used")
    if work.paradigm == "next-token":
        min_steps = max(min_steps, 1 + NEXT_TOKEN_MIN_DECODE_STEPS)

    def after_warmup():
        framework.check_memory()
        framework.reset_peak()

    try:
        labels = framework.labels(batch_size)
        framework.reset_peak()
        runs, total_steps = timed_runs(
            lambda steps, decode=True: _run_once(framework, work, labels, steps, seed, decode),
            plan.steps, trials,
            step_budget_s, adaptive, after_warmup, min_steps)
        framework.check_memory()
    except (RuntimeError, MemoryError) as err:
        if not framework.out_of_memory(err):
            raise
        peak = framework.peak_gb()
        framework.release()
        return {**record_identity(work, batch_size, decode=framework.decodes),
                "status": "out_of_memory", "error": str(err).split("\n")[0],
                "peak_memory_gb": peak, **_peak_note(framework, peak), **framework.info()}
    first, counts = runs[0], {}
    if adaptive and first["steps_taken"] is not None:
        # this run's counts, not those of the MLX run the plan recorded
        plan = dataclasses.replace(plan, steps_taken=first["steps_taken"],
                                   passes_used=first["forward_passes"])
    peak = framework.peak_gb()
    record = record_identity(work, batch_size, plan=plan, decode=framework.decodes)
    timing = summarize_runs(runs, total_steps, batch_size, record["gflops_per_image"],
                            num_tokens=plan.num_tokens if work.paradigm == "next-token" else None,
                            has_decode=framework.decodes)
    if first["forward_passes"] is not None:
        if not timing["extrapolated"]:  # counted, not taken from the plan
            guidance = 2 if plan.cfg_scale != 1.0 else 1
            record["forward_passes_per_image"] = first["forward_passes"] * guidance
        counts = {"forward_passes_source": "counted" if not timing["extrapolated"]
                  else "plan (the timed loop was cut short)",
                  "forward_passes_counted": first["forward_passes"]}
    return {**record, "status": "ok", **timing, **counts, "peak_memory_gb": peak,
            **_peak_note(framework, peak), "trials": trials, **framework.info()}


def _peak_note(framework: Framework, peak: float | None) -> dict:
    return {} if peak is not None else {"peak_memory_note": framework.peak_memory_note}


def _full_loop(step_times: list[float], total_steps: int, prefilled: bool) -> float:
    """The time of the whole loop from its first timed steps. A next-token loop's first step
    is the prefill, paid once: only the decode steps after it are scaled to the rest."""
    measured = len(step_times)
    if prefilled and 1 < measured < total_steps:
        return step_times[0] + sum(step_times[1:]) * (total_steps - 1) / (measured - 1)
    return sum(step_times) * total_steps / measured


def summarize_runs(runs: list[dict], total_steps: int, batch_size: int, gflops_per_image: float,
                   *, num_tokens: int | None = None, has_decode: bool = False) -> dict:
    """Latency (median, min, max), throughput, achieved FLOP/s and stage times of timed runs
    (each with conditioning_s, step_times, decode_s); a loop timed over fewer steps than
    `total_steps` is scaled to the full plan and marked as extrapolated. `step_s` spreads every
    timed step of every trial (a next-token loop's first step includes the prefix pass)."""
    measured = len(runs[0]["step_times"])
    loops = [_full_loop(r["step_times"], total_steps, prefilled=bool(num_tokens)) for r in runs]
    latencies = [r["conditioning_s"] + loop + r["decode_s"] for r, loop in zip(runs, loops)]
    latency, loop = statistics.median(latencies), statistics.median(loops)
    steps = [t for r in runs for t in r["step_times"]]
    # a next-token loop's first step is the prefill over the prefix (and the first token's
    # sampling), every later one a decode pass over one token: reported apart
    later = [t for r in runs for t in r["step_times"][1:]]
    token_stages = {"prefill": statistics.median(r["step_times"][0] for r in runs),
                    "per_token_decode": statistics.median(later) if later else None} \
        if num_tokens else {}
    return {
        "measured_steps": measured, "extrapolated": measured < total_steps,
        "step_s": {"min": min(steps), "median": statistics.median(steps), "max": max(steps),
                   "count": len(steps)},
        "latency_s": {"median": latency, "min": min(latencies), "max": max(latencies)},
        "images_per_s": batch_size / latency,
        "achieved_gflops_per_s": gflops_per_image * batch_size / latency,
        "stages_s": {
            "conditioning": statistics.median(r["conditioning_s"] for r in runs),
            "sampling": loop,
            "per_step": loop / total_steps,
            "per_token": loop / num_tokens if num_tokens else None,
            "decode": statistics.median(r["decode_s"] for r in runs) if has_decode else None,
            **token_stages,
        },
    }


def device_peak(env: dict) -> dict | None:
    if env["backend"] == "cpu":
        return measured_cpu_peak()
    return datasheet_peak(env.get("gpu") or env.get("processor"))


def add_peak_share(results: list[dict], peak: dict | None) -> None:
    """Achieved TFLOP/s as a share of the device peak for each record's dtype, where known."""
    for r in results:
        if r.get("status") != "ok" or not peak:
            continue
        key = "fp32_tflops" if r["dtype"] == "float32" else "fp16_tflops"
        if peak.get(key):
            r["share_of_peak"] = r["achieved_gflops_per_s"] / 1e3 / peak[key]


STUDY = {"fewest_flops": "next-token", "lowest_latency_batch_1": "diffusion",
         "highest_throughput": "next-token"}


def findings(results: list[dict]) -> list[dict]:
    """Per group of models compared (a grid size, or all named models): which paradigm has the
    fewest FLOPs per image, the lowest latency at batch 1 and the highest throughput at the
    largest batch that fitted, and whether that agrees with the study."""
    ok = [r for r in results if r.get("status") == "ok"]
    out = []
    for group in sorted({r["size"] or "models" for r in ok}):
        rows = [r for r in ok if (r["size"] or "models") == group]
        if len({r["paradigm"] for r in rows}) < 2:
            continue
        claims = {}
        claims["fewest_flops"] = min(rows, key=lambda r: r["gflops_per_image"])
        batch1 = [r for r in rows if r["batch_size"] == 1]
        if batch1:
            claims["lowest_latency_batch_1"] = min(batch1, key=lambda r: r["latency_s"]["median"])
        largest = {}
        for r in rows:
            if r["batch_size"] >= largest.get(r["model"], r)["batch_size"]:
                largest[r["model"]] = r
        claims["highest_throughput"] = max(largest.values(), key=lambda r: r["images_per_s"])
        for claim, r in claims.items():
            out.append({"group": group, "claim": claim, "paradigm": r["paradigm"],
                        "model": r["model"], "batch_size": r["batch_size"],
                        "study": STUDY[claim], "agrees": r["paradigm"] == STUDY[claim]})
    return out


def report(results: list[dict], *, settings: dict | None = None,
           reference: list[dict] | None = None) -> dict:
    env = device_info()
    peak = device_peak(env)
    if env["backend"] == "cpu" and _wants_bandwidth(results):
        # measured after the runs, so the models' memory is already given back
        peak = {**peak, "bandwidth_gbs": copy_bandwidth() / 1e9,
                "bandwidth_source": "measured (copy of a 512 MiB array, bytes read + written)"}
    elif peak and peak.get("bandwidth_gbs"):
        peak = {**peak, "bandwidth_source": peak["source"]}
    add_peak_share(results, peak)
    add_bandwidth_bound(results, (peak or {}).get("bandwidth_gbs"))
    rep = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": {**env, "peak": peak},
        "flops_convention": FLOPS_CONVENTION,
        "settings": settings or {},
        "results": results,
        "findings": findings(results),
    }
    if reference is not None:
        rep["reference"] = reference
    return rep
