"""`make bench`: the standard comparison, written into reports/ (bench.json, bench.md, plots).

The controlled grid (sizes S and B, all three paradigms, batch sizes 1 and 4) in MLX and in the
PyTorch reference on the same weights and plans; 8-bit and 4-bit rows for one model of each
paradigm; Janus-Pro-1B with random weights (benchmarks/janus.py: prefill, time per image token,
the decode's fraction of its weight-bandwidth bound; `--no-janus` skips it); aMUSEd-256 and -512's
stages (CLIP text, 12-step loop, VQ decode) against diffusers' (benchmarks/amused.py; `--no-amused`
skips it); Sana-0.6B-512 and -1.6B-1024's stages (Gemma-2 text, 20-step DPM-Solver++ loop, DC-AE
decode) against diffusers' and transformers' (benchmarks/sana.py; `--no-sana` skips it); the BLAS
that MLX's
CPU backend runs on, against numpy and torch. The reference runs in a child process without
the BLAS preloaded for MLX, at its faster thread count (`mlx_imgen.reference.child`). Every row
times at least --min-steps steps per trial (a step budget never cuts a loop below that) and
bench.md gives each row's min/median/max step.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import mlx.core as mx

from mlx_imgen.backbone import Transformer
from mlx_imgen.grid import default_plan, grid_config, latent_shape
from mlx_imgen.io import atomic_write_text
from mlx_imgen.paradigms import PARADIGMS
from mlx_imgen.plots import write_plots
from mlx_imgen.profiling import Workload, profile_workload, report
from mlx_imgen.quantize import quantization_record, quantize_model, weight_bytes
from mlx_imgen.report_format import markdown
from mlx_imgen.weights.dtypes import resolve_dtype

sys.path.insert(0, str(Path(__file__).parent))
from blas import blas_table  # noqa: E402


def grid_work(paradigm: str, size: str, bits: int | None = None) -> Workload:
    cfg = grid_config(paradigm, size)
    model = Transformer(cfg)
    extra = {}
    if bits:
        extra["quantization"] = quantization_record(bits, 64, quantize_model(model, bits, 64))
    mx.eval(model.parameters())
    name = f"grid-{paradigm}-{size}" + (f"-{bits}bit" if bits else "")
    return Workload(name=name, size=size, model=model, plan=default_plan(paradigm, cfg),
                    latent_shape=latent_shape(cfg) if cfg.input == "patches" else None,
                    extra=extra)


def janus_rows(args, reference: list | None, build=None, name: str = "janus-pro-1b") -> list[dict]:
    """Janus-Pro-1B with random weights in float32 (float16 on a GPU) at batch 1 and 16, and its
    8-bit and 4-bit language models at batch 1 (janus.ROWS), the torch reference of the float
    model at batch 1; one trial each (the harness times a next-token loop's prefill and at least
    5 decode steps), the VQ decode timed on one image: a 1.5B model decoding 576 tokens takes
    5 to 10 minutes per image on a 2-core CPU. `build` and `name` stand in a smaller model."""
    import janus  # beside this script

    build = build or janus.random_pipeline(name, resolve_dtype(None))
    return janus.measure(build, name, trials=1, step_budget=args.step_budget,
                         min_steps=args.min_steps, reference=reference)


def weight_memory(size: str) -> list[dict]:
    """Transformer weight bytes at float16, 8-bit and 4-bit (group size 64), per paradigm."""
    rows = []
    for paradigm in PARADIGMS:
        sizes = {}
        for bits in (None, 8, 4):
            model = Transformer(grid_config(paradigm, size))
            model.set_dtype(mx.float16)
            if bits:
                quantize_model(model, bits, 64)
            sizes[bits] = weight_bytes(model)
        rows.append({"paradigm": paradigm, "size": size, "float16_mb": sizes[None] / 1e6,
                     "8bit_mb": sizes[8] / 1e6, "4bit_mb": sizes[4] / 1e6,
                     "8bit_share": sizes[8] / sizes[None], "4bit_share": sizes[4] / sizes[None]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--sizes", default="S,B")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--step-budget", type=float, default=2.0)
    parser.add_argument("--min-steps", type=int, default=5,
                        help="time at least this many steps per trial, whatever the budget")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--no-janus", action="store_true",
                        help="skip the Janus-Pro-1B rows (6.5 to 8 minutes on a 2-core CPU, "
                        "the torch row included)")
    parser.add_argument("--no-amused", action="store_true",
                        help="skip the aMUSEd rows (minutes on a 2-core CPU)")
    parser.add_argument("--no-sana", action="store_true",
                        help="skip the Sana rows (tens of minutes on a 2-core CPU)")
    parser.add_argument("--clip-repeats", type=int, default=3,
                        help="repeats of the CLIP ViT-L/14 tower rows (0: none)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    results, reference = [], None if args.no_reference else []
    if reference is not None:
        from mlx_imgen.reference.child import profile_reference_in_child
    for size in args.sizes.split(","):
        for paradigm in PARADIGMS:
            work = grid_work(paradigm, size)
            for batch in batches:
                print(f"profiling {work.name} at batch {batch}", flush=True)
                results.append(profile_workload(work, batch, trials=args.trials,
                                                step_budget_s=args.step_budget,
                                                min_steps=args.min_steps))
                if reference is not None:
                    reference.append(profile_reference_in_child(
                        work, batch, trials=args.trials, step_budget_s=args.step_budget,
                        min_steps=args.min_steps))
            work.model = None
            mx.clear_cache()
    quant_size = args.sizes.split(",")[0]
    for paradigm in PARADIGMS:
        for bits in (8, 4):
            work = grid_work(paradigm, quant_size, bits)
            print(f"profiling {work.name} at batch 1", flush=True)
            results.append(profile_workload(work, 1, trials=args.trials,
                                            step_budget_s=args.step_budget,
                                            min_steps=args.min_steps))
    if not args.no_janus:
        results += janus_rows(args, reference)
    rep = report(results, settings=vars(args) | {"out": str(args.out)}, reference=reference)
    rep["blas"] = blas_table()
    rep["weight_memory"] = weight_memory(quant_size)
    if args.clip_repeats:
        import clip_towers  # beside this script

        print("timing CLIP ViT-L/14's text and image towers", flush=True)
        rep["clip"] = clip_towers.measure(["text", "image"], [1, 16], args.clip_repeats)
    if not args.no_amused:
        import amused  # beside this script

        print("timing aMUSEd-256 and -512's stages", flush=True)
        # torch at every core: on the 2-core EPYC it beat one thread for both sizes
        rep["amused"] = amused.measure(["256", "512"], [1, 2], repeats=1, steps_timed=2,
                                       torch_threads=[os.cpu_count() or 1], fit_row=True)
    if not args.no_sana:
        import sana  # beside this script

        print("timing Sana-0.6B-512 and -1.6B-1024's stages", flush=True)
        rep["sana"] = sana.measure(["0.6b", "1.6b"], [1, 2], repeats=1, steps_timed=1,
                                   torch_threads=[os.cpu_count() or 1], fit_row=True)
    atomic_write_text(args.out / "bench.json", json.dumps(rep, indent=2) + "\n")
    atomic_write_text(args.out / "bench.md", render(rep))
    for path in write_plots(rep, args.out):
        print(f"wrote {path}")
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")


def render(rep: dict) -> str:
    """bench.md: the profile tables, then the BLAS and quantized-weight sections."""
    text = markdown(rep, title="mlx-imgen bench")
    text += step_spread(rep)
    text += "\n## BLAS behind MLX's CPU backend (1024x1024 matmul)\n\n| setup | GFLOP/s |\n|---|---|\n"
    text += "".join(f"| {r['setup']} | {r['gflops']:.1f} |\n" for r in rep["blas"])
    text += ("\n## Transformer weight memory, quantized (group size 64)\n\n"
             "| paradigm | size | float16 MB | 8-bit MB (share) | 4-bit MB (share) |\n|---|---|---|---|---|\n")
    text += "".join(f"| {r['paradigm']} | {r['size']} | {r['float16_mb']:.1f} | {r['8bit_mb']:.1f} "
                    f"({100 * r['8bit_share']:.0f}%) | {r['4bit_mb']:.1f} "
                    f"({100 * r['4bit_share']:.0f}%) |\n" for r in rep["weight_memory"])
    if rep.get("clip"):
        import clip_towers

        text += ("\n## Text encoding and CLIP scoring (CLIP ViT-L/14)\n\n"
                 + clip_towers.markdown(rep["clip"]))
    if rep.get("amused"):
        import amused

        text += ("\n## aMUSEd text-to-image: text encoding, sampling loop, decode\n\n"
                 + amused.markdown(rep["amused"]))
    if rep.get("sana"):
        import sana

        text += ("\n## Sana text-to-image: text encoding, sampling loop, decode\n\n"
                 + sana.markdown(rep["sana"]))
    return text


def step_spread(rep: dict) -> str:
    """Every row's timed steps (all trials): how many, and the min, median and max seconds."""
    rows = [("MLX", r) for r in rep["results"]] + \
        [(r.get("label", "torch"), r) for r in rep.get("reference") or []]
    text = ("\n## Sampling steps timed (every trial): seconds per step\n\n"
            "| run | model | batch | steps timed | min | median | max |\n|---|---|---|---|---|---|---|\n")
    for who, r in rows:
        spread = r.get("step_s")
        if r.get("status") == "ok" and spread:
            text += (f"| {who} | {r['model']} | {r['batch_size']} | {spread['count']} | "
                     f"{spread['min']:.4f} | {spread['median']:.4f} | {spread['max']:.4f} |\n")
    return text


if __name__ == "__main__":
    main()
