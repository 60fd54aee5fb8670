"""Next-token decode against the weight-bandwidth bound, and quantized layers against float.

    python -m mlx_imgen.blas python benchmarks/decode.py [--tokens 32] [--repeats 3]

Prints, with the machine named:
- memory bandwidth from a large array copy (bytes read plus written over time);
- per-token decode time of the S and B next-token grid models at batch 1 and 4 (guidance on,
  so 2 and 8 rows), the weight bytes a token reads, the bound (those bytes over the bandwidth)
  and the achieved share of it, and the operations one decode step dispatches;
- 8-bit and 4-bit against fp32 on the CPU: one masked-token forward and one decode token of
  the S models, with MLX's quantized matmul and with the just-in-time dequantization
  (quantize.JustInTimeLinear), at their weight memory.
Repeats are interleaved; min and median are printed.
"""

import argparse
import os
import re
import statistics
import tempfile
import time

import mlx.core as mx

from mlx_imgen import quantize
from mlx_imgen.devices import copy_bandwidth, cpu_description
from mlx_imgen.backbone import Transformer
from mlx_imgen.grid import default_plan, grid_config
from mlx_imgen.paradigms import next_token
from mlx_imgen.paradigms.guidance import doubled, guide, with_null
from mlx_imgen.profiling import decode_weight_bytes


def machine() -> str:
    return cpu_description() + f"; MLX {mx.__version__} on {mx.default_device()}"


def summary(times: list[float]) -> str:
    return f"min {min(times) * 1e3:8.2f} ms  median {statistics.median(times) * 1e3:8.2f} ms"


def step_ops(model, rows: int) -> tuple[int, str]:
    """Operations in one decode step's graph (forward plus guidance and sampling), counted
    from MLX's graph export."""
    cfg = model.config
    plan = default_plan("next-token", cfg)
    labels = mx.zeros((rows // 2,), dtype=mx.int32)
    cache = model.make_cache(rows, cfg.seq_len)
    model(mx.zeros((rows, 0), dtype=mx.int32), with_null(labels, model.null_class), cache=cache)
    mx.eval([c.keys for c in cache], [c.values for c in cache])
    token = mx.zeros((rows // 2, 1), dtype=mx.int32)
    draws = next_token.TokenDraws(mx.zeros((rows // 2, 2), dtype=mx.uint32), 2)
    logits = model(doubled(token), cache=cache)[:, -1]
    out = next_token.sample_token(guide(logits, plan.cfg_scale), plan, draws, 1)
    with tempfile.NamedTemporaryFile("w+", suffix=".dot") as f:
        mx.export_to_dot(f, out)
        f.seek(0)
        dot = f.read()
    # primitives are drawn as rectangles; arrays (inputs, parameters, outputs) as ovals
    labels = re.findall(r'label ="([^"]+)", shape=rectangle', dot)
    common = sorted({name: labels.count(name) for name in labels}.items(), key=lambda kv: -kv[1])
    return len(labels), ", ".join(f"{name} {count}" for name, count in common[:6])


def decode_times(model, batch: int, tokens: int) -> list[float]:
    """Seconds per token of one run of `tokens` decode steps (the prefill excluded)."""
    plan = default_plan("next-token", model.config)
    plan.num_tokens = tokens + 1
    stamps = []
    for _ in next_token.iterate(model, mx.arange(batch), plan, seed=0):
        stamps.append(time.perf_counter())
    return [(stamps[-1] - stamps[0]) / tokens]


def grid_model(paradigm: str, size: str, bits: int | None = None, seed: int = 0):
    mx.random.seed(seed)
    model = Transformer(grid_config(paradigm, size))
    if bits:
        quantize.quantize_model(model, bits, 64)
    mx.eval(model.parameters())
    return model


def interleaved(cases: dict, repeats: int) -> dict:
    times = {name: [] for name in cases}
    for run in cases.values():
        run()  # warm-up
    for _ in range(repeats):
        for name, run in cases.items():
            times[name] += run()
    return times


def timed(fn):
    def run():
        start = time.perf_counter()
        mx.eval(fn())
        return [time.perf_counter() - start]
    return run


def decode_section(tokens: int, repeats: int, bandwidth: float) -> None:
    print("\n## Next-token decode per token (grid models, guidance on: 2 rows per image)")
    for size in ("S", "B"):
        model = grid_model("next-token", size)
        weights = decode_weight_bytes(model)
        bound = weights / bandwidth
        cases = {batch: (lambda b=batch: decode_times(model, b, tokens)) for batch in (1, 4)}
        times = interleaved(cases, repeats)
        for batch, t in times.items():
            best = min(t)
            ops, common = step_ops(model, 2 * batch)
            print(f"{size} batch {batch}: {summary(t)}  weights {weights / 2 ** 20:6.1f} MiB  "
                  f"bound {bound * 1e3:6.2f} ms  achieved {100 * bound / best:5.1f}% of the bound"
                  f"  {ops} ops/step ({common})")


def quantized_section(repeats: int) -> None:
    print("\n## Quantized against fp32 on the CPU (S models; ratio = time / fp32 time)")
    jit_rows = quantize.DEQUANTIZE_MIN_ROWS
    masked = {bits: grid_model("masked-token", "S", bits) for bits in (None, 8, 4)}
    causal = {bits: grid_model("next-token", "S", bits) for bits in (None, 8, 4)}
    cfg = masked[None].config
    tokens = mx.full((2, cfg.num_tokens), cfg.vocab_size, dtype=mx.int32)
    labels = mx.array([1, cfg.num_classes])

    def with_rows(rows, fn):
        def run():
            quantize.DEQUANTIZE_MIN_ROWS = rows
            try:
                return fn()
            finally:
                quantize.DEQUANTIZE_MIN_ROWS = jit_rows
        return run

    never = 2 ** 62
    cases = {}
    for bits, model in masked.items():
        forward = timed(lambda m=model: m(tokens, labels))
        name = "fp32" if bits is None else f"{bits}-bit"
        cases[("masked forward, batch 1", name)] = forward
        if bits:
            cases[("masked forward, batch 1", name + " (MLX qmm)")] = with_rows(never, forward)
    for bits, model in causal.items():
        decode = (lambda m=model: decode_times(m, 1, 8))
        name = "fp32" if bits is None else f"{bits}-bit"
        cases[("decode per token, batch 1", name)] = decode
    times = interleaved(cases, repeats)
    for (case, name), t in times.items():
        base = min(times[(case, "fp32")])
        bits = None if name == "fp32" else int(name.split("-")[0])
        model = (masked if case.startswith("masked") else causal)[bits]
        print(f"{case:26s} {name:18s} {summary(t)}  x{min(t) / base:5.2f} of fp32  "
              f"weights {quantize.weight_bytes(model) / 2 ** 20:6.1f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="decode steps timed per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# {machine()}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other work on the machine skews "
          "every figure)")
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (512 MiB array, best of 7)")
    decode_section(args.tokens, args.repeats, bandwidth)
    quantized_section(args.repeats)


if __name__ == "__main__":
    main()
