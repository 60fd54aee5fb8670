"""CLIP ViT-L/14 (openai/clip-vit-large-patch14's shapes, random weights): prompts per second
through the text tower and images per second through the image tower, MLX against
transformers' torch model on this machine.

    .venv/bin/python benchmarks/clip_towers.py [--batches 1 16] [--towers text image] [--repeats 3]

`make bench` runs it too (benchmarks/bench.py) and puts its table in bench.md and bench.json.

As benchmarks/compare_torch.py does: each framework runs in its own process; MLX under
`python -m mlx_imgen.blas` (OpenBLAS preloaded, runtime-compiler flags on), torch without the
preload at 1 thread and at all cores, the faster counting (the table says which). Text: 77-token
rows (a 20-token prompt padded, with its attention mask), as the scorer sends them; images:
224 x 224 preprocessed pixels. fp32. Each worker times every case once after a warm-up call;
the parent runs the workers in turn `--repeats` times and prints min and median.
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

# openai/clip-vit-large-patch14, written out (the hub's config.json, not read from the network)
TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu",
            layer_norm_eps=1e-5, eos_token_id=2, projection_dim=768)
VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
              num_attention_heads=16, image_size=224, patch_size=14, num_channels=3,
              hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768)
PROMPT_TOKENS, LENGTH = 20, 77


def hub_config() -> dict:
    return {"model_type": "clip", "projection_dim": 768, "text_config": TEXT,
            "vision_config": VISION}


def text_inputs(batch: int):
    import numpy as np
    ids = np.full((batch, LENGTH), TEXT["vocab_size"] - 1, dtype=np.int64)
    ids[:, 0] = TEXT["vocab_size"] - 2
    ids[:, 1:PROMPT_TOKENS - 1] = np.random.default_rng(0).integers(
        300, 40000, (batch, PROMPT_TOKENS - 2))
    mask = np.zeros_like(ids)
    mask[:, :PROMPT_TOKENS] = 1
    return ids, mask


def image_inputs(batch: int):
    import numpy as np
    return np.random.default_rng(0).standard_normal((batch, 224, 224, 3)).astype(np.float32)


def mlx_cases(towers, batches):
    import mlx.core as mx
    from mlx_imgen.text.clip import CLIPTextTower, CLIPVisionTower, configs_from_hf
    text_cfg, vision_cfg = configs_from_hf(hub_config())
    mx.random.seed(0)
    for tower in towers:
        model = CLIPTextTower(text_cfg) if tower == "text" else CLIPVisionTower(vision_cfg)
        mx.eval(model.parameters())
        for batch in batches:
            if tower == "text":
                ids, mask = (mx.array(a) for a in text_inputs(batch))
                call = lambda: mx.eval(model.encode(ids, mask).pooled)  # noqa: E731
            else:
                pixels = mx.array(image_inputs(batch))
                call = lambda: mx.eval(model(pixels))  # noqa: E731
            yield tower, batch, call


def torch_cases(towers, batches):
    import torch
    from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)
    torch.manual_seed(0)
    for tower in towers:
        model = (CLIPTextModelWithProjection(CLIPTextConfig(**TEXT)) if tower == "text"
                 else CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION))).eval()
        for batch in batches:
            if tower == "text":
                ids, mask = (torch.tensor(a) for a in text_inputs(batch))
                call = lambda: model(input_ids=ids, attention_mask=mask).text_embeds  # noqa: E731
            else:
                pixels = torch.tensor(image_inputs(batch)).permute(0, 3, 1, 2).contiguous()
                call = lambda: model(pixel_values=pixels).image_embeds  # noqa: E731
            yield tower, batch, call


def worker(args) -> None:
    if args.worker == "mlx":
        cases = mlx_cases(args.towers, args.batches)
    else:
        import torch
        torch.set_num_threads(args.threads)
        torch.set_grad_enabled(False)
        cases = torch_cases(args.towers, args.batches)
    times = {}
    for tower, batch, call in cases:
        call()  # warm-up: MLX compiles its fused kernels, torch plans its kernels
        start = time.perf_counter()
        call()
        times[f"{tower}|{batch}"] = time.perf_counter() - start
    print("RESULT " + json.dumps(times))


def run_worker(name: str, threads: int, argv: list[str]) -> dict:
    return workers.run_worker(__file__, name, argv, threads)


def describe() -> tuple[str, str]:
    mlx = workers.mlx_setup()
    probe = ("import torch, mlx.core as mx; "
             "print(mx.__version__, mx.default_device().type.name, torch.__version__, sep='|')")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    mlx_version, device, torch_version = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip().split("|")
    return (f"MLX {mlx_version} ({device}, fp32; {mlx})",
            f"torch {torch_version} (cpu, fp32, transformers' CLIP*WithProjection, sdpa; "
            "no LD_PRELOAD, its bundled BLAS)")


def measure(towers: list[str], batches: list[int], repeats: int) -> dict:
    """Rows of items per second (min and median) for MLX and torch at its faster thread count,
    with what ran, JSON-ready."""
    argv = ["--towers", *towers, "--batches", *map(str, batches)]
    cores = os.cpu_count() or 1
    workers = [("mlx", 0), ("torch", 1)] + ([("torch", cores)] if cores > 1 else [])
    times: dict = {w: {} for w in workers}
    for _ in range(repeats):
        for name, threads in workers:
            for case, t in run_worker(name, threads, argv).items():
                times[(name, threads)].setdefault(case, []).append(t)
    mlx_text, torch_text = describe()
    rows = []
    for case, mlx in times[("mlx", 0)].items():
        tower, batch = case.split("|")
        best = min(workers[1:], key=lambda w: min(times[w][case]))
        rate = lambda ts: {"min_s": min(ts), "median_s": statistics.median(ts),  # noqa: E731
                           "per_s_best": int(batch) / min(ts),
                           "per_s_median": int(batch) / statistics.median(ts)}
        rows.append({"tower": tower, "unit": "prompts" if tower == "text" else "images",
                     "batch": int(batch), "mlx": rate(mlx), "torch": rate(times[best][case]),
                     "torch_threads": best[1],
                     "torch_over_mlx": min(times[best][case]) / min(mlx)})
    return {"machine": cpu_description(), "mlx": mlx_text, "torch": torch_text,
            "repeats": repeats, "rows": rows}


def markdown(result: dict) -> str:
    text = (f"CLIP ViT-L/14, random weights. Machine: {result['machine']}; {result['mlx']}; "
            f"{result['torch']}; {result['repeats']} interleaved repeats, min and median of the "
            "per-call time as items per second; torch at its faster thread count (by min).\n\n"
            "| tower | batch | MLX items/s (best, median) | torch items/s (best, median) | "
            "torch threads | torch/MLX time |\n|---|---|---|---|---|---|\n")
    for r in result["rows"]:
        rate = lambda x: f"{x['per_s_best']:.2f}, {x['per_s_median']:.2f}"  # noqa: E731
        name = "text tower" if r["tower"] == "text" else "image tower (the scorer's)"
        text += (f"| {name} ({r['unit']}/s) | {r['batch']} | {rate(r['mlx'])} | "
                 f"{rate(r['torch'])} | {r['torch_threads']} | {r['torch_over_mlx']:.2f} |\n")
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--towers", nargs="+", choices=["text", "image"], default=["text", "image"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["mlx", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    else:
        print(markdown(measure(args.towers, args.batches, args.repeats)))


if __name__ == "__main__":
    main()
