"""aMUSEd's U-ViT (amused-256 and amused-512's transformer shapes, random weights): one guided
forward pass (two rows an image: the prompt's and the negative prompt's, as aMUSEd samples with
guidance), MLX against diffusers' UVit2DModel in torch on this machine.

    .venv/bin/python benchmarks/amused.py [--sizes 256 512] [--batches 1] [--repeats 1]

`make bench` runs it too (benchmarks/bench.py; `--no-amused` skips it) and puts its table in
bench.md and bench.json. As benchmarks/clip_towers.py does: each framework runs in its own
process (workers.py), MLX under `python -m mlx_imgen.blas`, torch without the preload at 1 thread
and at all cores, the faster counting. fp32; 77 text states (CLIP's padded length), every token
masked. Each worker times every case once after a warm-up call; the parent runs the workers in
turn `--repeats` times. Per row: seconds per forward, the transformer's share of an image over
aMUSEd's 12 steps, GFLOP/s by mlx_imgen.flops.uvit_forward_flops. CLIP's prompt encoding and
the VQ decode are not in these rows (the CLIP towers have their own table).
"""

import argparse
import json
import os
import statistics
import time

import workers  # beside this script
from mlx_imgen.devices import cpu_description
from mlx_imgen.families.amused import config_for
from mlx_imgen.flops import uvit_forward_flops
from mlx_imgen.uvit import TEXT_LENGTH

STEPS = 12      # AmusedPipeline's default, and the amused preset's


def config(size: str):
    return config_for(size, int(size))


def diffusers_config(size: str) -> dict:
    """UVit2DModel's arguments for the same architecture (its `vocab_size` is the embedding's)."""
    return {("vocab_size" if k == "embed_vocab_size" else k): v
            for k, v in config(size).to_dict().items()}


def inputs(size: str, batch: int):
    """The guided batch's numpy inputs: every token masked, random text, 2 * batch rows."""
    import numpy as np
    cfg, rows = config(size), 2 * batch
    rng = np.random.default_rng(0)
    tokens = np.full((rows, cfg.grid_size, cfg.grid_size), cfg.mask_id, dtype=np.int64)
    states = rng.standard_normal((rows, TEXT_LENGTH, cfg.encoder_hidden_size)).astype(np.float32)
    pooled = rng.standard_normal((rows, cfg.cond_embed_dim)).astype(np.float32)
    side = cfg.grid_size * 16
    micro = np.array([[side, side, 0, 0, 6]] * rows, dtype=np.float32)
    return tokens, states, pooled, micro


def mlx_cases(sizes, batches):
    import mlx.core as mx
    from mlx_imgen.uvit import UVit
    mx.random.seed(0)
    for size in sizes:
        model = UVit(config(size))
        mx.eval(model.parameters())
        for batch in batches:
            tokens, states, pooled, micro = inputs(size, batch)
            tokens = mx.array(tokens.reshape(tokens.shape[0], -1).astype("int32"))
            states, pooled, micro = mx.array(states), mx.array(pooled), mx.array(micro)
            call = lambda: mx.eval(model(tokens, context=states, pooled=pooled,  # noqa: E731
                                         micro_conditions=micro))
            yield size, batch, call
        del model
        mx.clear_cache()


def torch_cases(sizes, batches):
    import torch
    from diffusers import UVit2DModel
    torch.manual_seed(0)
    for size in sizes:
        model = UVit2DModel(**diffusers_config(size)).eval()
        for batch in batches:
            tokens, states, pooled, micro = (torch.from_numpy(a) for a in inputs(size, batch))
            call = lambda: model(tokens, states, pooled, micro)  # noqa: E731
            yield size, batch, call
        del model


def worker(args) -> None:
    if args.worker == "mlx":
        import mlx.core as mx
        cases = mlx_cases(args.sizes, args.batches)
    else:
        import torch
        torch.set_num_threads(args.threads)
        torch.set_grad_enabled(False)
        cases = torch_cases(args.sizes, args.batches)
    times, peaks = {}, {}
    for size, batch, call in cases:
        call()  # warm-up: MLX compiles its fused kernels, torch plans its kernels
        if args.worker == "mlx":
            mx.reset_peak_memory()
        start = time.perf_counter()
        call()
        times[f"{size}|{batch}"] = time.perf_counter() - start
        if args.worker == "mlx":
            peaks[f"{size}|{batch}"] = mx.get_peak_memory()
    print("RESULT " + json.dumps({"times": times, "peaks": peaks}))


def measure(sizes: list[str], batches: list[int], repeats: int) -> dict:
    """Rows of seconds per guided forward (min and median) for MLX and torch at its faster
    thread count, with each row's FLOPs and what ran, JSON-ready."""
    argv = ["--sizes", *sizes, "--batches", *map(str, batches)]
    cores = os.cpu_count() or 1
    runs = [("mlx", 0), ("torch", 1)] + ([("torch", cores)] if cores > 1 else [])
    times: dict = {run: {} for run in runs}
    peaks: dict = {}
    for _ in range(repeats):
        for name, threads in runs:
            result = workers.run_worker(__file__, name, argv, threads)
            for case, t in result["times"].items():
                times[(name, threads)].setdefault(case, []).append(t)
            for case, peak in result["peaks"].items():
                peaks[case] = max(peaks.get(case, 0), peak)
    rows = []
    for case, mlx in times[("mlx", 0)].items():
        size, batch = case.split("|")
        batch = int(batch)
        flops = uvit_forward_flops(config(size)).total * 2 * batch
        best = min(runs[1:], key=lambda run: min(times[run][case]))
        torch = times[best][case]
        timing = lambda ts: {"min_s": min(ts), "median_s": statistics.median(ts),  # noqa: E731
                             "gflops_per_s": flops / min(ts) / 1e9,
                             "image_s": STEPS * min(ts) / batch}
        rows.append({"model": f"amused-{size}", "batch": batch, "rows": 2 * batch,
                     "gflops_per_forward": flops / 1e9, "mlx": timing(mlx),
                     "mlx_peak_mb": peaks[case] / 1e6, "torch": timing(torch),
                     "torch_threads": best[1], "torch_over_mlx": min(torch) / min(mlx)})
    return {"machine": cpu_description(), "mlx": workers.mlx_setup(), "repeats": repeats,
            "steps": STEPS, "rows": rows}


def markdown(result: dict) -> str:
    text = (f"aMUSEd's U-ViT, random weights of the published shapes, fp32. Machine: "
            f"{result['machine']}; MLX: {result['mlx']}; torch: diffusers' UVit2DModel at its "
            f"faster thread count (by min). One guided forward (2 rows an image, {TEXT_LENGTH} "
            f"text states); per image: {result['steps']} steps of it, the transformer only "
            f"(no CLIP, no VQ decode); {result['repeats']} interleaved repeat(s), min time.\n\n"
            "| model | batch (rows) | GFLOP a forward | MLX s a forward (GFLOP/s) | "
            "torch s a forward (GFLOP/s) | torch threads | MLX s an image | torch s an image | "
            "torch/MLX | MLX peak MB |\n|---|---|---|---|---|---|---|---|---|---|\n")
    for r in result["rows"]:
        mlx, torch = r["mlx"], r["torch"]
        text += (f"| {r['model']} | {r['batch']} ({r['rows']}) | {r['gflops_per_forward']:.0f} | "
                 f"{mlx['min_s']:.2f} ({mlx['gflops_per_s']:.0f}) | {torch['min_s']:.2f} "
                 f"({torch['gflops_per_s']:.0f}) | {r['torch_threads']} | {mlx['image_s']:.1f} | "
                 f"{torch['image_s']:.1f} | {r['torch_over_mlx']:.2f} | {r['mlx_peak_mb']:.0f} |\n")
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=["256", "512"], default=["256", "512"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", choices=["mlx", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        print(markdown(measure(args.sizes, args.batches, args.repeats)))


if __name__ == "__main__":
    main()
