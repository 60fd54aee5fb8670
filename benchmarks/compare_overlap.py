"""What `mlx-imgen compare` does beside sampling, and whether doing it during sampling helps.

Per model (random weights of the published architecture, stand-in tokenizers: no download), it
times an image's generation, its PNG encoding and atomic write, and its CLIP scoring (a random
ViT-L/14 scorer, the default scorer's shape), then generates the same images as a suite
(study.compare.generate_suite) with each image written on the writer thread while the next
samples, against written in turn, interleaved over `--repeats`. `--steps K` shortens a diffusion
or masked-token model's loop (Janus-Pro's 576 tokens stay), which stands for a faster device:
the writes' share grows as the sampling shrinks.

    python benchmarks/compare_overlap.py --models amused-256 sana-0.6b-512 --steps 2 \
        --out reports/compare-overlap
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
from PIL import Image

from clip_towers import hub_config as vit_l14_config  # beside this script
from mlx_imgen.cli.compare import random_pipeline
from mlx_imgen.devices import cpu_description
from mlx_imgen.io import atomic_write_text
from mlx_imgen.study.compare import generate_suite, write_image
from mlx_imgen.study.suite import load_suite

def random_scorer(folder: Path):
    """CLIPScorer of ViT-L/14's shape with random weights, reading a stand-in CLIP tokenizer."""
    from mlx_imgen.convert.tokenizers import write_stand_in_tokenizer
    from mlx_imgen.scoring import CLIPScorer
    from mlx_imgen.text.clip import CLIPModel, configs_from_hf
    from mlx_imgen.text.tokenizer import PromptTokenizer

    text, vision = configs_from_hf(vit_l14_config())
    model = CLIPModel(text, vision)
    mx.eval(model.parameters())
    tokenizer = PromptTokenizer.from_folder(write_stand_in_tokenizer("amused-256",
                                                                     folder / "clip"))
    return CLIPScorer(folder, model, tokenizer, {})


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench_model(alias: str, args, scratch: Path, scorer) -> dict:
    pipe = random_pipeline(alias, args.dtype, 0, scratch / "tokenizers")
    if args.steps and "steps" in pipe.index["sampling"]:
        pipe.index["sampling"]["steps"] = args.steps
    prompts = load_suite(None)[:args.images]
    warm = generate_suite(pipe, alias, prompts[:1], scratch / "warm", seed=0)  # compiles
    image = Image.open(warm.paths[0]).convert("RGB")
    image.load()
    write = timed(lambda: write_image(scratch / "one.png", image, {"prompt": "x"}, 1.0), 5)
    scorer.image_features([image])
    score = timed(lambda: mx.eval(scorer.image_features([image])), 3)
    modes: dict[str, list[dict]] = {"overlapped": [], "in turn": []}
    for r in range(args.repeats):
        order = ("overlapped", "in turn") if r % 2 == 0 else ("in turn", "overlapped")
        for mode in order:
            start = time.perf_counter()
            run = generate_suite(pipe, alias, prompts, scratch / f"{mode}-{r}", seed=0,
                                 overlap=mode == "overlapped")
            modes[mode].append({"wall_s": time.perf_counter() - start,
                                "images_s": sum(run.seconds)})
    walls = {mode: [x["wall_s"] for x in runs] for mode, runs in modes.items()}
    image_s = statistics.median(x["images_s"] / args.images for runs in modes.values()
                                for x in runs)
    return {"model": alias, "paradigm": pipe.paradigm, "image_px": list(image.size),
            "steps": pipe.index["sampling"].get("steps"), "images": args.images,
            "image_s": image_s, "png_write_s": statistics.median(write),
            "clip_image_s": statistics.median(score),
            "suite_wall_s": {mode: {"min": min(w), "median": statistics.median(w)}
                             for mode, w in walls.items()},
            "runs": modes}


def markdown(rep: dict) -> str:
    lines = ["# compare: writing and scoring beside sampling", "",
             f"Machine: {rep['machine']}; MLX {rep['mlx']} ({rep['blas']}), {rep['dtype']}, "
             "random weights with "
             f"stand-in tokenizers; {rep['images']} images per suite, {rep['repeats']} repeats "
             "of each mode, interleaved. Steps shortened where a step count is given.", "",
             "| model | steps | image px | s/image | PNG write ms | CLIP image ms | "
             "suite in turn s (min / median) | overlapped s (min / median) | "
             "overlapped / in turn (median) |", "|" + "---|" * 9]
    for m in rep["models"]:
        a, b = m["suite_wall_s"]["in turn"], m["suite_wall_s"]["overlapped"]
        lines.append(
            f"| {m['model']} | {m['steps'] or '-'} | {m['image_px'][0]} | {m['image_s']:.2f} | "
            f"{m['png_write_s'] * 1e3:.1f} | {m['clip_image_s'] * 1e3:.0f} | "
            f"{a['min']:.2f} / {a['median']:.2f} | {b['min']:.2f} / {b['median']:.2f} | "
            f"{b['median'] / a['median']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    from mlx_imgen.blas import describe, ensure_optimized_blas

    ensure_optimized_blas()  # re-executes this script with OpenBLAS, as the CLI runs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["amused-256", "sana-0.6b-512"])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        scorer = random_scorer(scratch)
        models = []
        for alias in args.models:
            models.append(bench_model(alias, args, scratch / alias, scorer))
            print(json.dumps({k: v for k, v in models[-1].items() if k != "runs"}),
                  file=sys.stderr)
    rep = {"machine": cpu_description(), "blas": describe(), "mlx": mx.__version__,
           "dtype": args.dtype,
           "images": args.images, "repeats": args.repeats, "steps": args.steps,
           "models": models}
    text = markdown(rep)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(rep, indent=2) + "\n")
        atomic_write_text(args.out.with_suffix(".md"), text)
    return rep


if __name__ == "__main__":
    main()
