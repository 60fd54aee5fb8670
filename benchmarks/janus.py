"""Janus-Pro rows: `make bench` runs them (benchmarks/bench.py imports this file; `--no-janus`
skips them), and this script runs them alone, e.g. the 7B on a GPU or Apple silicon:

    python benchmarks/janus.py --size 7B --batch-sizes 1,16 --out out/janus

Random weights of the published shape (no download), conditioned on a stand-in prompt of 32
tokens; per row the prefill, the time per image token, images/s, peak memory, FLOPs per image
(prefill over the prompt, decode with the KV cache, gen_aligner and gen_head, VQ decode) and, at
batch 1, the achieved fraction of the decode's weight-bandwidth bound (the report's "Next-token
decode" table). Float rows at each batch size, 8-bit and 4-bit rows of the language model at
batch 1. Each loop is timed over its prefill and at least 5 of its 575 decode steps, and only
the decode steps are extrapolated.

On the README's 2-core EPYC VM, quiet (fp32 1B: 5.9 GB of weights, 5.1 GB read per token), a
token takes 0.53 s at batch 1 (about 1 s with other work on the machine) and 0.97 s at batch 16,
the prefill 2 s (20 s at batch 16), the VQ decode 10 to 11 s per image: 5.3 minutes per image
at batch 1, 47 s at batch 16; the 8-bit and 4-bit models decode at 2.2 s per token (MLX's CPU
quantized matmul at 2 rows). So the decode is timed on one image per run and scaled to the
batch (`decode_images`), and these rows with the torch one take 6.5 minutes of `make bench`
(7.7 with other work on the machine).
"""

import argparse
import json
from pathlib import Path
from typing import Callable

import mlx.core as mx

from mlx_imgen.profiling import PROFILE_PROMPT_TOKENS
from mlx_imgen.io import atomic_write_text
from mlx_imgen.pipeline import Pipeline
from mlx_imgen.profiling import Workload, profile_workload, report
from mlx_imgen.quantize import weight_bytes
from mlx_imgen.report_format import markdown
from mlx_imgen.weights.dtypes import resolve_dtype

# (bits, batch sizes): float at batch 1 and 16, each quantized language model at batch 1
ROWS = ((None, (1, 16)), (8, (1,)), (4, (1,)))


def random_pipeline(alias: str, dtype: str) -> Callable[[int | None], Pipeline]:
    """Builds the alias with random weights, its language model quantized to `bits` if given."""
    def build(bits: int | None) -> Pipeline:
        return Pipeline.random(alias, dtype, bits)
    return build


def workload(pipe: Pipeline, name: str, decode_images: int | None = 1) -> Workload:
    bits = (pipe.index.get("quantization") or {}).get("bits")
    return Workload(name=name + (f"-{bits}bit" if bits else ""), model=pipe.transformer,
                    plan=pipe.plan()[0], decode=pipe.decode_samples,
                    autoencoder=pipe.autoencoder,
                    decode_flops_per_image=pipe.decode_flops_per_image(),
                    prompt_tokens=PROFILE_PROMPT_TOKENS, decode_images=decode_images,
                    extra={"random_weights": bool(pipe.index.get("random_weights")),
                           "quantization": pipe.index.get("quantization"),
                           # what the model holds: language model, then the VQ decoder
                           "weight_bytes": {"transformer": weight_bytes(pipe.transformer),
                                            "autoencoder": weight_bytes(pipe.autoencoder)}})


def measure(build: Callable[[int | None], Pipeline], name: str, rows=ROWS, *, trials: int,
            step_budget: float | None, min_steps: int, decode_images: int | None = 1,
            reference: list | None = None, reference_rows=((None, 1),)) -> list[dict]:
    """Profile records of each (bits, batch sizes) row, one model in memory at a time; with
    `reference` a list, the torch reference's records of the `reference_rows` (bits, batch)
    are appended to it (by default the float model at batch 1: the reference has no quantized
    layers, and on a 2-core CPU each torch row takes minutes)."""
    results = []
    # MLX keeps freed buffers for reuse; at batch 16 (6.2 GB of fp32 weights, a 7.6 GB KV
    # cache) they took the process past 17 GB and the machine's memory: give them back
    cache_limit = mx.set_cache_limit(0)
    try:
        for bits, batches in rows:
            results += _rows(build, name, bits, batches, trials, step_budget, min_steps,
                             decode_images, reference, reference_rows)
    finally:
        mx.set_cache_limit(cache_limit)
    return results


def _rows(build, name, bits, batches, trials, step_budget, min_steps, decode_images, reference,
          reference_rows) -> list[dict]:
    """One model's rows (see `measure`); its weights are freed before the next is built."""
    work, results = workload(build(bits), name, decode_images), []
    for batch in batches:
        print(f"profiling {work.name} at batch {batch}", flush=True)
        results.append(profile_workload(work, batch, trials=trials, step_budget_s=step_budget,
                                        min_steps=min_steps))
        if reference is not None and results[-1]["status"] == "ok" and \
                (bits, batch) in reference_rows:
            from mlx_imgen.reference.child import profile_reference_in_child

            print(f"profiling {work.name} at batch {batch} in torch", flush=True)
            reference.append(profile_reference_in_child(
                work, batch, trials=trials, step_budget_s=step_budget, min_steps=min_steps))
    work.model = work.decode = work.autoencoder = None
    mx.clear_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1B", choices=("1B", "7B"))
    parser.add_argument("--batch-sizes", default="1,16",
                        help="the float rows' batch sizes ('' for none)")
    parser.add_argument("--bits", default="8,4", help="quantized rows at batch 1 ('' for none)")
    parser.add_argument("--dtype", default=None, help="float rows' dtype (default: float16 on "
                        "a GPU, float32 on the CPU)")
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--step-budget", type=float, default=2.0)
    parser.add_argument("--min-steps", type=int, default=5)
    parser.add_argument("--decode-images", type=int, default=1,
                        help="images decoded per run, scaled to the batch (0: all)")
    parser.add_argument("--reference", action="store_true", help="also the torch reference")
    parser.add_argument("--out", type=Path, default=Path("out/janus"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    alias = f"janus-pro-{args.size.lower()}"
    batches = tuple(int(b) for b in args.batch_sizes.split(",") if b)
    rows = [(None, batches)] if batches else []
    rows += [(int(b), (1,)) for b in args.bits.split(",") if b]
    reference = [] if args.reference else None
    results = measure(random_pipeline(alias, resolve_dtype(args.dtype)), alias, rows,
                      trials=args.trials, step_budget=args.step_budget,
                      min_steps=args.min_steps, decode_images=args.decode_images or None,
                      reference=reference)
    rep = report(results, settings=vars(args) | {"out": str(args.out)}, reference=reference)
    atomic_write_text(args.out / "janus.json", json.dumps(rep, indent=2) + "\n")
    text = markdown(rep, title="Janus-Pro benchmark")
    atomic_write_text(args.out / "janus.md", text)
    print(text)


if __name__ == "__main__":
    main()
