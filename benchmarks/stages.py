"""What the text-to-image stage benchmarks (amused.py, sana.py) share: rows of MLX against
torch, each in its own process (workers.py), interleaved `repeats` times; a run's total from its
stages (text encoding, the loop's steps timed over a few and scaled, the decode); the largest
batch that fits, from the peaks' growth; the markdown table.

A bench module provides `BENCH`, a StageBench naming its model, its steps and its functions:
`mlx_run(size, batch, steps_timed, dtype)` and `torch_run(...)` return {"text": s, "step": [s,
...], "decode": s, "peak_gb": ..., "device": ...}; `flops_per_image(size)` {"text", "sampling",
"decode", "total"}.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import workers


@dataclass
class StageBench:
    name: str                        # "amused": its files are NAME.json and NAME.md
    script: str                      # the bench's own file, which its workers run
    steps: int                       # the loop's steps at the model's defaults
    model_name: Callable[[str], str]  # size -> the row's model ("amused-256")
    mlx_run: Callable
    torch_run: Callable
    flops_per_image: Callable
    torch_packages: str              # what torch runs with, as `import` names them
    preface: str                     # what the table's first sentence says of the weights


def recorded(seconds: dict, stage: str, start: float) -> None:
    """A stage's seconds since `start`; steps accumulate in a list."""
    elapsed = time.perf_counter() - start
    if stage == "step":
        seconds.setdefault("step", []).append(elapsed)
    else:
        seconds[stage] = elapsed


def torch_device() -> str:
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def torch_sync(device: str) -> Callable[[], None]:
    import torch
    return {"cuda": torch.cuda.synchronize,
            "mps": lambda: torch.mps.synchronize()}.get(device, lambda: None)


def timed_mlx(run, steps_timed: int) -> dict:
    """`run(seconds, steps, images=...)` once to warm up (MLX compiles its fused kernels on
    first use; one image decoded), then timed over `steps_timed` steps, with MLX's peak."""
    import mlx.core as mx
    run({}, 1, images=1)
    mx.reset_peak_memory()
    seconds = {}
    run(seconds, steps_timed)
    return {**seconds, "peak_gb": mx.get_peak_memory() / 1e9,
            "memory_limit_gb": mx.get_memory_limit() / 1e9,
            "device": mx.default_device().type.name}


def timed_torch(run, steps_timed: int, device: str) -> dict:
    """As timed_mlx, under torch.no_grad; the peak is CUDA's allocator's (none elsewhere)."""
    import torch
    with torch.no_grad():
        run({}, 1, images=1)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = {}
        run(seconds, steps_timed)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
    return {**seconds, "peak_gb": peak, "device": device}


def worker(bench: StageBench, args) -> None:
    if args.worker == "torch":
        import torch
        torch.set_num_threads(args.threads)
        torch.set_grad_enabled(False)
    run = bench.mlx_run if args.worker == "mlx" else bench.torch_run
    result = run(args.sizes[0], args.batches[0], args.steps_timed, args.dtype)
    # the process's resident peak (Linux reports KB): weights, activations, allocator caches
    result["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("RESULT " + json.dumps(result))


def total_s(run: dict, steps: int) -> float:
    """A run's seconds for its whole batch: text, the plan's steps, decode."""
    return run["text"] + steps * statistics.mean(run["step"]) + run["decode"]


def largest_batch(rows: list[dict], limit_gb: float) -> int | None:
    """The batch whose peak, on the line through the two largest batches' peaks, reaches the
    memory limit; None with fewer than two batches."""
    if len(rows) < 2:
        return None
    (b1, p1), (b2, p2) = [(r["batch"], r["mlx"]["peak_gb"]) for r in rows[-2:]]
    per_image = (p2 - p1) / (b2 - b1)
    return None if per_image <= 0 else int(b2 + (limit_gb - p2) / per_image)


def row(bench: StageBench, size: str, batch: int, flops: dict, repeats: int, steps_timed: int,
        dtype: str, threads: list[int]) -> dict:
    """One (size, batch) row: MLX and torch at its faster thread count (by the run's total),
    the runs interleaved `repeats` times; min and median totals, the fastest run's stages."""
    argv = ["--sizes", str(size), "--batches", str(batch), "--steps-timed", str(steps_timed),
            "--dtype", dtype]
    runs = {("mlx", 0): [], **{("torch", t): [] for t in threads}}
    for _ in range(repeats):
        for name, t in runs:
            print(f"{bench.model_name(size)} batch {batch}: {name}"
                  + (f" ({t} threads)" if name == "torch" else ""), flush=True)
            runs[(name, t)].append(workers.run_worker(bench.script, name, argv, t))

    def total(run: dict) -> float:
        return total_s(run, bench.steps)

    torch_key = min((k for k in runs if k[0] == "torch"), key=lambda k: min(map(total, runs[k])))
    result = {"model": bench.model_name(size), "size": size, "batch": batch,
              "flops_per_image": flops, "torch_threads": torch_key[1]}
    for who, key in (("mlx", ("mlx", 0)), ("torch", torch_key)):
        totals = [total(r) for r in runs[key]]
        fastest = runs[key][totals.index(min(totals))]
        result[who] = {"total_min_s": min(totals), "total_median_s": statistics.median(totals),
                       "s_per_image": min(totals) / batch, "images_per_s": batch / min(totals),
                       "text_s": fastest["text"], "step_s": statistics.mean(fastest["step"]),
                       "decode_s": fastest["decode"], "peak_gb": fastest["peak_gb"],
                       "rss_gb": fastest["rss_gb"], "device": fastest["device"]}
    result["mlx"]["memory_limit_gb"] = runs[("mlx", 0)][0]["memory_limit_gb"]
    result["torch_over_mlx"] = result["torch"]["total_min_s"] / result["mlx"]["total_min_s"]
    return result


def measure(bench: StageBench, sizes, batches, repeats: int = 1, steps_timed: int = 2,
            dtype: str = "float32", torch_threads: list[int] | None = None,
            fit_row: bool = False) -> dict:
    """Rows per (size, batch) (see `row`); the largest batch that fits MLX's memory limit,
    estimated from the two largest batches' peaks, and with `fit_row` a row run at that batch
    where it is larger than those given."""
    cores = os.cpu_count() or 1
    threads = torch_threads or sorted({1, cores})
    rows, fits = [], {}
    for size in sizes:
        flops = bench.flops_per_image(size)
        size_rows = [row(bench, size, batch, flops, repeats, steps_timed, dtype, threads)
                     for batch in sorted(batches)]
        fit = largest_batch(size_rows, size_rows[-1]["mlx"]["memory_limit_gb"])
        fits[bench.model_name(size)] = fit
        if fit_row and fit and fit > size_rows[-1]["batch"]:
            size_rows.append({**row(bench, size, fit, flops, repeats, steps_timed, dtype,
                                    threads), "largest_fit": True})
        rows += size_rows
    return {"machine": workers.machine(), "mlx": workers.mlx_setup(),
            "torch": torch_setup(bench.torch_packages), "dtype": dtype, "repeats": repeats,
            "steps_timed": steps_timed, "steps": bench.steps, "rows": rows,
            "largest_batch_estimate": fits}


def torch_setup(packages: str = "torch diffusers") -> str:
    """The torch side's package versions, read in a process without the MLX preload."""
    names = packages.split()
    probe = f"import {', '.join(names)}; print({', '.join(n + '.__version__' for n in names)})"
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    versions = out.stdout.split()
    known = len(versions) == len(names)
    return (", ".join(f"{n} {v}" for n, v in zip(names, versions)) if known
            else "torch (versions unknown)") + " without LD_PRELOAD"


def markdown(bench: StageBench, result: dict) -> str:
    text = (f"{bench.preface}, {result['dtype']}. Machine: {result['machine']}. MLX: "
            f"{result['mlx']}. {result['torch']}, at its faster thread count. The loop is "
            f"timed over {result['steps_timed']} of its {result['steps']} equal steps and "
            f"scaled; {result['repeats']} interleaved repeat(s), the fastest run's stages. "
            "Peak: MLX's allocator, torch's CUDA allocator (none on a CPU); RSS: the process's "
            "resident peak.\n\n| model | batch | framework | text s | step s | decode s | "
            "s per image | images/s | peak GB | RSS GB | TFLOP per image | torch/MLX time |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in result["rows"]:
        for who in ("mlx", "torch"):
            x = r[who]
            name = "MLX" if who == "mlx" else f"torch ({r['torch_threads']} threads)"
            batch = f"{r['batch']} (largest fit)" if r.get("largest_fit") else r["batch"]
            peak = "-" if x["peak_gb"] is None else f"{x['peak_gb']:.2f}"
            ratio = f"{r['torch_over_mlx']:.2f}" if who == "torch" else ""
            text += (f"| {r['model']} | {batch} | {name} | {x['text_s']:.3g} | "
                     f"{x['step_s']:.3g} | {x['decode_s']:.3g} | {x['s_per_image']:.3g} | "
                     f"{x['images_per_s']:.3g} | {peak} | {x['rss_gb']:.2f} | "
                     f"{r['flops_per_image']['total'] / 1e12:.2f} | {ratio} |\n")
    fits = [f"{model} about {n}" for model, n in result["largest_batch_estimate"].items() if n]
    if fits:
        text += ("\nLargest batch that fits MLX's memory limit, from the peaks' growth: "
                 + ", ".join(fits) + ".\n")
    return text


def main(bench: StageBench, sizes: list[str], doc: str, batches: list[int]) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sizes, default=sizes)
    parser.add_argument("--batches", nargs="+", type=int, default=batches)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps-timed", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--torch-threads", nargs="+", type=int, default=None,
                        help="torch thread counts to try (default: 1 and all cores)")
    parser.add_argument("--fit-row", action="store_true",
                        help="also run each size at the largest batch estimated to fit")
    parser.add_argument("--out", default=None,
                        help=f"also write {bench.name}.json and {bench.name}.md here")
    parser.add_argument("--worker", choices=["mlx", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(bench, args)
        return
    result = measure(bench, args.sizes, args.batches, args.repeats, args.steps_timed,
                     args.dtype, args.torch_threads, args.fit_row)
    text = markdown(bench, result)
    if args.out:
        from mlx_imgen.io import atomic_write_text
        os.makedirs(args.out, exist_ok=True)
        atomic_write_text(os.path.join(args.out, f"{bench.name}.json"),
                          json.dumps(result, indent=2) + "\n")
        atomic_write_text(os.path.join(args.out, f"{bench.name}.md"), text)
    print(text)
