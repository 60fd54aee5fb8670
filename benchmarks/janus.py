"""Janus-Pro benchmark (not part of `make bench`: a 1.5B-parameter language model decoding 576
tokens per image is hours per image on a 2-core CPU). Run it on a GPU or Apple silicon:

    python benchmarks/janus.py --size 1B --batch-sizes 1,16 --out out/janus

Random weights of the published shape (no download); per row: prefill time, time per image
token, images/s, peak memory, FLOPs per image (prefill over a stand-in prompt, decode with the
KV cache, gen_aligner and gen_head, VQ decode) and, where the device's memory bandwidth is
known, how near the decode at batch 1 comes to its bound: the weight bytes one token reads
(every weight but the text embedding, which only the prefill looks up) over the bandwidth.
Float rows and 8-bit and 4-bit rows of the language model. Writes janus.json and janus.md.
"""

import argparse
import json
from pathlib import Path

import mlx.core as mx

from mlx_imgen.cli.profile import PROFILE_PROMPT_TOKENS
from mlx_imgen.io import atomic_write_text
from mlx_imgen.pipeline import Pipeline
from mlx_imgen.profiling import Workload, profile_workload, report
from mlx_imgen.quantize import weight_bytes
from mlx_imgen.weights.dtypes import resolve_dtype


def workload(alias: str, dtype: str, bits: int | None) -> tuple[Workload, int]:
    """The alias's random-weight workload, quantized to `bits` where given, and the bytes of
    weights one decode step reads."""
    pipe = Pipeline.random(alias, dtype)
    if bits:
        pipe.quantize(bits)
    model = pipe.transformer
    plan, _ = pipe.plan()
    per_token = weight_bytes(model) - sum(v.nbytes for v in _leaves(model.text_embed))
    work = Workload(name=alias + (f"-{bits}bit" if bits else ""), model=model, plan=plan,
                    decode=pipe.decode_samples, autoencoder=pipe.autoencoder,
                    decode_flops_per_image=pipe.decode_flops_per_image(),
                    prompt_tokens=PROFILE_PROMPT_TOKENS,
                    extra={"random_weights": True, "quantization": pipe.index.get("quantization"),
                           "weight_bytes_per_token": per_token})
    return work, per_token


def _leaves(module) -> list[mx.array]:
    from mlx.utils import tree_flatten

    return [v for _, v in tree_flatten(module.parameters())]


def bandwidth_bound(record: dict, bandwidth_gbs: float | None) -> None:
    """Add the decode's bound at batch 1 (weight bytes per token / bandwidth) and the ratio of
    the measured time per token to it."""
    per_token = (record.get("stages_s") or {}).get("per_token_decode")
    if record.get("batch_size") != 1 or not bandwidth_gbs or not per_token:
        return
    bound = record["weight_bytes_per_token"] / (bandwidth_gbs * 1e9)
    record["bandwidth_bound_s_per_token"] = bound
    record["measured_over_bound"] = per_token / bound


def render(rep: dict) -> str:
    lines = ["# Janus-Pro benchmark", "",
             f"Device: {rep['environment'].get('gpu') or rep['environment'].get('processor')} "
             f"({rep['environment']['backend']}); MLX {rep['environment']['mlx_version']}.",
             "", "| model | batch | prefill s | s/token | images/s | peak GB | GFLOPs/image "
             "| weight MB/token | measured / bandwidth bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["results"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['model']} | {r['batch_size']} | {r['status']} | | | | | | |")
            continue
        stages = r["stages_s"]
        ratio = r.get("measured_over_bound")
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {stages['prefill']:.3f} | "
            f"{stages['per_token_decode'] or stages['per_token']:.4f} | {r['images_per_s']:.4f} | "
            f"{r['peak_memory_gb']:.2f} | {r['gflops_per_image']:.0f} | "
            f"{r['weight_bytes_per_token'] / 1e6:.0f} | "
            f"{f'{ratio:.2f}' if ratio else 'bandwidth unknown'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1B", choices=("1B", "7B"))
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--bits", default="float,8,4", help="float and/or 8, 4")
    parser.add_argument("--dtype", default=None, help="float rows' dtype (default: float16 on "
                        "a GPU, float32 on the CPU)")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--step-budget", type=float, default=5.0)
    parser.add_argument("--min-steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("out/janus"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    alias, dtype = f"janus-pro-{args.size.lower()}", resolve_dtype(args.dtype)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    results = []
    for bits in [None if b == "float" else int(b) for b in args.bits.split(",")]:
        work, _ = workload(alias, dtype, bits)
        for batch in batches:
            print(f"profiling {work.name} at batch {batch}", flush=True)
            results.append(profile_workload(work, batch, trials=args.trials,
                                            step_budget_s=args.step_budget,
                                            min_steps=args.min_steps))
        work.model = work.decode = work.autoencoder = None
        mx.clear_cache()
    rep = report(results, settings=vars(args) | {"out": str(args.out)})
    bandwidth = (rep["environment"].get("peak") or {}).get("bandwidth_gbs")
    for record in results:
        bandwidth_bound(record, bandwidth)
    atomic_write_text(args.out / "janus.json", json.dumps(rep, indent=2) + "\n")
    atomic_write_text(args.out / "janus.md", render(rep))
    print(render(rep))


if __name__ == "__main__":
    main()
