"""MLX against torch on this machine's CPU: the grid models' forward passes, sampling steps and
decode tokens, each framework in its own process, repeats interleaved.

    .venv/bin/python benchmarks/compare_torch.py [--sizes S B] [--repeats 3]

MLX runs under `python -m mlx_imgen.blas` (OpenBLAS preloaded, runtime-compiler flags on);
torch runs in a plain environment (no LD_PRELOAD) at 1 and at 2 intra-op threads, and the
faster of the two counts (the table says which). Both hold the same random weights: the torch
process builds the MLX model from the same seed and loads it into the torch mirror
(`reference.backbone.from_mlx`). Cases, guidance on (so 2 rows per image), fp32:
- forward: one model call of masked-token and diffusion at batch 1 and 4 (2 and 8 rows);
- step: one sampling step (forward, guidance and the paradigm's step math), the mean step of a
  run of `--steps` steps after its first;
- decode: next-token per token, the mean of `--tokens` tokens after the prefill, KV cache on.
Each worker process runs every case once after a warm-up; the parent runs the workers in turn
`--repeats` times and prints min and median per case and torch/MLX (above 1: MLX is faster).
`--breakdown` instead prints, for MLX, the share of an S forward each op class takes.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import workers  # beside this script
from mlx_imgen.devices import cpu_description



def machine() -> str:
    return cpu_description()


# ---------------------------------------------------------------- the worker (one framework)

def cases(sizes: list[str]) -> list[tuple[str, str, str, int]]:
    out = []
    for size in sizes:
        for kind in ("forward", "step"):
            for paradigm in ("masked-token", "diffusion"):
                for batch in (1, 4):
                    out.append((kind, paradigm, size, batch))
        for batch in (1, 4):
            out.append(("decode", "next-token", size, batch))
    return out


def mlx_model(paradigm: str, size: str):
    import mlx.core as mx
    from mlx_imgen.backbone import Transformer
    from mlx_imgen.grid import grid_config
    mx.random.seed(0)
    model = Transformer(grid_config(paradigm, size))
    mx.eval(model.parameters())
    return model


def mean_step(iterator, sync) -> float:
    """Seconds per step after the first (which holds the setup and, for decode, the prefill)."""
    stamps = []
    for value in iterator:
        sync(value)
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def plan_of(paradigm: str, config, args):
    from mlx_imgen.grid import default_plan
    plan = default_plan(paradigm, config, None if paradigm == "next-token" else args.steps)
    if paradigm == "next-token":
        plan.num_tokens = args.tokens + 1
    return plan


def mlx_runner(args):
    import mlx.core as mx
    from mlx_imgen import paradigms
    from mlx_imgen.grid import latent_shape
    from mlx_imgen.paradigms.guidance import with_null

    def build(kind, paradigm, size, batch, model):
        cfg = model.config
        labels = mx.arange(batch)
        if kind == "forward":
            rows = with_null(labels, model.null_class)
            if paradigm == "masked-token":
                x = mx.full((2 * batch, cfg.num_tokens), model.mask_id, dtype=mx.int32)
                call = lambda: model(x, rows)
            else:
                x = mx.random.normal((2 * batch, *latent_shape(cfg)))
                t = mx.full((2 * batch,), 0.5)
                call = lambda: model(x, rows, t)

            def run():
                start = time.perf_counter()
                mx.eval(call())
                return time.perf_counter() - start
            return run
        plan = plan_of(paradigm, cfg, args)
        extra = {"latent_shape": latent_shape(cfg)} if paradigm == "diffusion" else {}
        return lambda: mean_step(paradigms.iterate(model, labels, plan, seed=0, **extra), mx.eval)
    return build


def torch_runner(args):
    import torch
    from mlx_imgen.grid import latent_shape
    from mlx_imgen.reference import samplers

    torch.set_num_threads(args.threads)

    def build(kind, paradigm, size, batch, model):
        cfg = model.config
        labels = torch.arange(batch)
        if kind == "forward":
            rows = torch.cat([labels, torch.full((batch,), model.null_class)])
            if paradigm == "masked-token":
                x = torch.full((2 * batch, cfg.num_tokens), model.mask_id, dtype=torch.long)
                call = lambda: model(x, rows)
            else:
                x = torch.randn((2 * batch, *latent_shape(cfg)))
                t = torch.full((2 * batch,), 0.5)
                call = lambda: model(x, rows, t)

            def run():
                with torch.inference_mode():
                    start = time.perf_counter()
                    call()
                    return time.perf_counter() - start
            return run
        plan = plan_of(paradigm, cfg, args)
        extra = {"latent_shape": latent_shape(cfg)} if paradigm == "diffusion" else {}
        return lambda: mean_step(samplers.iterate(model, labels, plan, seed=0, **extra),
                                 lambda _: None)
    return build


def worker(args) -> None:
    if args.worker == "mlx":
        build, convert = mlx_runner(args), (lambda m: m)
    else:
        from mlx_imgen.reference.backbone import from_mlx
        build, convert = torch_runner(args), (lambda m: from_mlx(m, "cpu"))
    models, times = {}, {}
    for kind, paradigm, size, batch in cases(args.sizes):
        key = (paradigm, size)
        if key not in models:
            models[key] = convert(mlx_model(paradigm, size))
        run = build(kind, paradigm, size, batch, models[key])
        if kind == "forward":
            run()  # warm-up (MLX compiles its fused kernels here); a step run drops its first
        times[f"{kind}|{paradigm}|{size}|{batch}"] = run()
    print("RESULT " + json.dumps(times))


# ---------------------------------------------------------------- op breakdown

def op_classes(xp: str, size: str, rows: int) -> dict:
    """Callables doing one op class's work of a whole grid forward (all blocks) at `rows` rows
    of 256 tokens, in MLX or torch, on random inputs of the forward's shapes."""
    from mlx_imgen.grid import GRID_SIZES
    depth, d, heads = GRID_SIZES[size]
    n, hd, hidden = 256, d // heads, 4 * d
    if xp == "mlx":
        import mlx.core as mx
        import mlx.nn as nn
        from mlx_imgen.nn.activations import gelu_tanh
        from mlx_imgen.nn.attention import attention_cpu
        r = lambda *shape: mx.random.normal(shape)
        x, h, q = r(rows, n, d), r(rows, n, hidden), r(rows, heads, n, hd)
        scores = r(rows, heads, n, n)
        w = {k: r(a, b) for k, (a, b) in dict(qkv=(d, 3 * d), o=(d, d), f1=(d, hidden),
                                               f2=(hidden, d)).items()}
        norm, sync = nn.LayerNorm(d, affine=False), mx.eval
        from mlx_imgen.nn.activations import softmax_fused
        softmax = softmax_fused
        linear = lambda a, b: a @ b
        transpose = lambda t: t.reshape(rows, n, heads, hd).transpose(0, 2, 1, 3)
        untranspose = lambda t: t.transpose(0, 2, 1, 3).reshape(rows, n, d)
        attend = lambda: attention_cpu(q, q, q, hd ** -0.5)
    else:
        import torch
        torch.set_grad_enabled(False)
        r = lambda *shape: torch.randn(shape)
        x, h, q = r(rows, n, d), r(rows, n, hidden), r(rows, heads, n, hd)
        scores = r(rows, heads, n, n)
        w = {k: r(a, b) for k, (a, b) in dict(qkv=(d, 3 * d), o=(d, d), f1=(d, hidden),
                                               f2=(hidden, d)).items()}
        ln = torch.nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        norm, sync = ln, (lambda v: None)
        softmax = lambda s: torch.softmax(s, dim=-1)
        gelu_tanh = lambda t: torch.nn.functional.gelu(t, approximate="tanh")
        linear = lambda a, b: a @ b
        transpose = lambda t: t.reshape(rows, n, heads, hd).transpose(1, 2).contiguous()
        untranspose = lambda t: t.transpose(1, 2).reshape(rows, n, d)
        attend = lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)

    def repeat(fn):
        def run():
            outs = [fn(i) for i in range(depth)]
            sync(outs)
        return run

    shift, scale = x[:1, :1] * 0.1, x[:1, :1] * 0.2
    return {
        "matmul (linear layers)": repeat(lambda i: [linear(x, w["qkv"]), linear(x, w["o"]),
                                                    linear(x, w["f1"]), linear(h, w["f2"])]),
        "attention core (QK, softmax, PV)": repeat(lambda i: attend()),
        "softmax alone": repeat(lambda i: softmax(scores + i)),
        "LayerNorm x2": repeat(lambda i: [norm(x + i), norm(x - i)]),
        "GELU-tanh": repeat(lambda i: gelu_tanh(h + i)),
        "elementwise (modulate x2, gated residual x2)": repeat(
            lambda i: [x * (1 + scale) + shift, x * (1 - scale) + shift + i, x + scale * x,
                       x + shift * x]),
        "head split/merge transposes": repeat(lambda i: [transpose(x + i), untranspose(q + i)]),
    }


def breakdown_worker(args) -> None:
    out = {}
    for size in args.sizes:
        for rows in (2, 8):
            for name, run in op_classes(args.worker[len("breakdown-"):], size, rows).items():
                run()
                best = float("inf")
                for _ in range(3):
                    start = time.perf_counter()
                    run()
                    best = min(best, time.perf_counter() - start)
                out[f"{size}|{rows}|{name}"] = best
    print("RESULT " + json.dumps(out))


def breakdown(args) -> None:
    argv = ["--sizes", *args.sizes]
    names = ["breakdown-mlx", "breakdown-torch1", "breakdown-torch2"]
    times = {name: {} for name in names}
    for _ in range(args.repeats):
        for name in names:
            for case, t in run_worker(name, argv).items():
                times[name].setdefault(case, []).append(t)
    print(f"# {machine()}\n# op classes of one grid forward (all blocks), ms, min of "
          f"{args.repeats} x 3; torch at its faster thread count")
    print(f"{'size rows op class':62s} {'MLX':>8s} {'torch':>8s} {'thr':>3s} {'torch/MLX':>9s}")
    for case in times[names[0]]:
        size, rows, name = case.split("|")
        m = min(times[names[0]][case])
        best = min(names[1:], key=lambda n: min(times[n][case]))
        t = min(times[best][case])
        print(f"{size} {rows:>2s} rows  {name:50s} {m * 1e3:8.1f} {t * 1e3:8.1f} "
              f"{best[-1]:>3s} {t / m:9.2f}")


# ---------------------------------------------------------------- the parent

def run_worker(name: str, argv: list[str]) -> dict:
    """name: "mlx", "breakdown-mlx", or a torch worker with its thread count ("torch2")."""
    if name.endswith("mlx"):
        return workers.run_worker(__file__, name, argv)
    return workers.run_worker(__file__, name.rstrip("12"), argv, int(name[-1]))


def describe_frameworks() -> tuple[str, str]:
    mlx = workers.mlx_setup()
    probe = ("import torch, mlx.core as mx; print(mx.__version__, torch.__version__, "
             "torch.backends.mkldnn.is_available())")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    versions = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True).stdout.split()
    return (f"MLX {versions[0]} (cpu, fp32; {mlx})",
            f"torch {versions[1]} (cpu, fp32, no LD_PRELOAD; its bundled BLAS; oneDNN "
            f"{versions[2]})")


def ms(values: list[float]) -> str:
    return f"{min(values) * 1e3:8.1f} {statistics.median(values) * 1e3:8.1f}"


def parent(args) -> None:
    argv = ["--sizes", *args.sizes, "--steps", str(args.steps), "--tokens", str(args.tokens)]
    names = ["mlx", "torch1", "torch2"]
    times = {name: {} for name in names}
    for _ in range(args.repeats):
        for name in names:
            for case, t in run_worker(name, argv).items():
                times[name].setdefault(case, []).append(t)
    mlx_text, torch_text = describe_frameworks()
    print(f"# {machine()}\n# {mlx_text}\n# {torch_text}\n# {args.repeats} interleaved repeats; "
          f"ms min / median; torch at its faster thread count (by min); ratio = torch / MLX")
    print(f"{'case':36s} {'MLX min':>8s} {'median':>8s} {'torch min':>9s} {'median':>8s} "
          f"{'threads':>7s} {'ratio min':>9s} {'median':>7s}")
    for case in times["mlx"]:
        kind, paradigm, size, batch = case.split("|")
        m = times["mlx"][case]
        best = min(("torch1", "torch2"), key=lambda n: min(times[n][case]))
        t = times[best][case]
        label = f"{size} {paradigm} {kind}, batch {batch}" + (" (per token)" if kind == "decode"
                                                              else "")
        print(f"{label:36s} {ms(m)} {ms(t):>18s} {best[5:]:>7s} {min(t) / min(m):9.2f} "
              f"{statistics.median(t) / statistics.median(m):7.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["S", "B"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="sampling steps a step case runs")
    parser.add_argument("--tokens", type=int, default=16, help="decode tokens a decode case runs")
    parser.add_argument("--breakdown", action="store_true",
                        help="time each op class of a forward in both frameworks instead")
    parser.add_argument("--worker", choices=["mlx", "torch", "breakdown-mlx", "breakdown-torch"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker and args.worker.startswith("breakdown"):
        if args.worker.endswith("torch"):
            import torch
            torch.set_num_threads(args.threads)
        breakdown_worker(args)
    elif args.worker:
        worker(args)
    elif args.breakdown:
        breakdown(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
