"""aMUSEd-256 and -512 (random weights of the published shapes): the stages of a text-to-image
run, MLX against diffusers' torch pipeline parts on this machine.

    .venv/bin/python benchmarks/amused.py [--sizes 256 512] [--batches 1 4] [--repeats 2]

`make bench` runs it too (benchmarks/bench.py; `--no-amused` skips it) and puts its table in
bench.md and bench.json. Each framework runs in its own process (workers.py): MLX under
`python -m mlx_imgen.blas`, torch without the preload at its faster thread count. Stages, as
AmusedPipeline runs them: CLIP-L/14's text tower on the batch's prompts and their empty
negative prompts (77-token rows), the sampling loop (12 steps at guidance 10: each step one
U-ViT pass over the doubled batch, then the scheduler's step; torch runs diffusers' UVit2DModel
and AmusedScheduler, MLX the amused preset), and the VQ-GAN decode (always float32, as the
pipeline upcasts it). Every step costs the same (a full pass over every token), so the loop is
timed over `--steps-timed` steps after a warm-up run (every stage; one image decoded) and
scaled to 12. Per row: the stages, the seconds per image (the run's total over its batch: the
latency at batch 1), images/s, peak memory, FLOPs per image. The largest batch that fits is
estimated from the peaks of the two largest batches run (peak memory grows linearly with the
batch) against the memory MLX may use; `--fit-row` (make bench sets it) then runs that batch too.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workers  # noqa: E402  (beside this script)
from mlx_imgen.autoencoders.diffusers_vq import DiffusersVQConfig  # noqa: E402
from mlx_imgen.families.amused import config_for  # noqa: E402
from mlx_imgen.flops import clip_text_flops, uvit_forward_flops  # noqa: E402
from mlx_imgen.text.clip import CLIP_L14_TEXT  # noqa: E402
from mlx_imgen.uvit import TEXT_LENGTH  # noqa: E402

STEPS, GUIDANCE, PROMPT_TOKENS = 12, 10.0, 20


def parts(size: str):
    """The U-ViT, VQ-GAN and text tower configs of a published size (tests pass tiny ones)."""
    return config_for(size, int(size)), DiffusersVQConfig(), CLIP_L14_TEXT


def uvit_kwargs(config) -> dict:
    """UVit2DModel's arguments for the same architecture (its `vocab_size` is the embedding's)."""
    return {("vocab_size" if k == "embed_vocab_size" else k): v
            for k, v in config.to_dict().items()}


def vq_kwargs(config) -> dict:
    levels = len(config.block_out_channels)
    return dict(block_out_channels=list(config.block_out_channels),
                layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
                out_channels=config.out_channels, norm_num_groups=config.norm_groups,
                mid_block_add_attention=config.mid_attention,
                num_vq_embeddings=config.num_vq_embeddings, vq_embed_dim=config.vq_embed_dim,
                down_block_types=["DownEncoderBlock2D"] * levels,
                up_block_types=["UpDecoderBlock2D"] * levels, lookup_from_codebook=True,
                force_upcast=True)


def text_kwargs(config) -> dict:
    return dict(hidden_size=config.width, intermediate_size=config.mlp_hidden,
                num_hidden_layers=config.depth, num_attention_heads=config.heads,
                max_position_embeddings=config.max_positions, vocab_size=config.vocab_size,
                hidden_act=config.activation, layer_norm_eps=config.norm_eps,
                bos_token_id=config.vocab_size - 2, eos_token_id=config.eos_token_id,
                projection_dim=config.projection_dim)


def text_ids(config, rows: int):
    """Rows of the text tower's length: BOS, a stand-in prompt, EOS (the largest id), then
    EOS as padding (CLIP-L's pad token in aMUSEd's tokenizer), as aMUSEd pads to 77."""
    import numpy as np
    length = min(TEXT_LENGTH, config.max_positions)
    ids = np.full((rows, length), config.vocab_size - 1, dtype=np.int64)
    ids[:, 0] = config.vocab_size - 2
    words = min(PROMPT_TOKENS, length - 2)
    ids[:, 1:1 + words] = np.random.default_rng(0).integers(1, config.vocab_size - 2,
                                                            (rows, words))
    return ids


def _recorded(seconds: dict, stage: str, start: float) -> None:
    elapsed = time.perf_counter() - start
    if stage == "step":
        seconds.setdefault("step", []).append(elapsed)
    else:
        seconds[stage] = elapsed


# ---------------------------------------------------------------- MLX

def mlx_run(size: str, batch: int, steps_timed: int, dtype: str) -> dict:
    import mlx.core as mx
    from mlx_imgen.autoencoders import AUTOENCODERS
    from mlx_imgen.paradigms import masked_token, presets
    from mlx_imgen.text.clip import CLIPTextTower
    from mlx_imgen.uvit import UVit
    from mlx_imgen.weights.dtypes import DTYPES

    uvit_cfg, vq_cfg, text_cfg = parts(size)
    mx.random.seed(0)
    model, text = UVit(uvit_cfg), CLIPTextTower(text_cfg)
    model.set_dtype(DTYPES[dtype])
    text.set_dtype(DTYPES[dtype])
    vq = AUTOENCODERS["diffusers-vq"].model(vq_cfg)
    mx.eval(model.parameters(), text.parameters(), vq.parameters())
    plan = presets.make_plan("amused", uvit_cfg, presets.defaults("amused"))
    ids = mx.array(text_ids(text_cfg, 2 * batch).astype("int32"))
    g = uvit_cfg.grid_size

    def condition():
        out = text.encode(ids, layer=-2)
        states = out.hidden_states.astype(model.dtype)
        mx.eval(states, out.pooled)
        return masked_token.CrossAttentionText(states[:batch], out.pooled[:batch],
                                               states[batch:], out.pooled[batch:])

    def decode(tokens):
        codes = mx.where(tokens == model.mask_id, 0, tokens).reshape(-1, g, g)
        mx.eval(vq.decode_codes(codes))

    def run(seconds: dict, steps: int, images: int = batch) -> None:
        start = time.perf_counter()
        cond = condition()
        _recorded(seconds, "text", start)
        loop = masked_token.iterate(model, cond, plan, seed=0)
        for _ in range(steps):
            start = time.perf_counter()
            tokens = next(loop).tokens  # the loop evaluates each step before yielding it
            _recorded(seconds, "step", start)
        loop.close()
        start = time.perf_counter()
        decode(tokens[:images])
        _recorded(seconds, "decode", start)

    run({}, 1, images=1)  # warm-up (MLX compiles its fused kernels on first use), one decode
    mx.reset_peak_memory()
    seconds = {}
    run(seconds, steps_timed)
    return {**seconds, "peak_gb": mx.get_peak_memory() / 1e9,
            "memory_limit_gb": mx.get_memory_limit() / 1e9,
            "device": mx.default_device().type.name}


# ---------------------------------------------------------------- torch (diffusers)

def torch_device() -> str:
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def torch_run(size: str, batch: int, steps_timed: int, dtype: str) -> dict:
    import torch
    from diffusers import AmusedScheduler, UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    uvit_cfg, vq_cfg, text_cfg = parts(size)
    device, torch_dtype = torch_device(), getattr(torch, dtype)
    sync = {"cuda": torch.cuda.synchronize,
            "mps": lambda: torch.mps.synchronize()}.get(device, lambda: None)
    torch.manual_seed(0)
    text = CLIPTextModelWithProjection(CLIPTextConfig(**text_kwargs(text_cfg)))
    text = text.eval().to(device, torch_dtype)
    model = UVit2DModel(**uvit_kwargs(uvit_cfg)).eval().to(device, torch_dtype)
    vq = VQModel(**vq_kwargs(vq_cfg)).eval().to(device)  # float32, as the pipeline upcasts it
    scheduler = AmusedScheduler(mask_token_id=uvit_cfg.mask_id)
    ids = torch.tensor(text_ids(text_cfg, 2 * batch), device=device)
    g, side = uvit_cfg.grid_size, uvit_cfg.grid_size * vq_cfg.downsample
    micro = torch.tensor([[side, side, 0, 0, 6]] * 2 * batch, device=device, dtype=torch_dtype)
    generator = torch.Generator(device).manual_seed(0)

    def run(seconds: dict, steps: int, images: int = batch) -> None:
        start = time.perf_counter()
        out = text(ids, output_hidden_states=True)
        states, pooled = out.hidden_states[-2], out.text_embeds
        sync()
        _recorded(seconds, "text", start)
        scheduler.set_timesteps(STEPS, (2, 0), device)
        latents = torch.full((batch, g, g), uvit_cfg.mask_id, dtype=torch.long, device=device)
        for timestep in scheduler.timesteps[:steps]:
            start = time.perf_counter()
            logits = model(torch.cat([latents] * 2), micro_conds=micro, pooled_text_emb=pooled,
                           encoder_hidden_states=states)
            uncond, cond = logits.chunk(2)
            latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), timestep, latents,
                                     generator=generator).prev_sample
            sync()
            _recorded(seconds, "step", start)
        start = time.perf_counter()
        codes = torch.where(latents == uvit_cfg.mask_id, 0, latents)[:images]
        vq.decode(codes, force_not_quantize=True,
                  shape=(images, g, g, vq_cfg.vq_embed_dim)).sample.clip(0, 1)
        sync()
        _recorded(seconds, "decode", start)

    with torch.no_grad():
        run({}, 1, images=1)  # warm-up, one decode
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = {}
        run(seconds, steps_timed)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
    return {**seconds, "peak_gb": peak, "device": device}


# ---------------------------------------------------------------- the parent

def worker(args) -> None:
    if args.worker == "torch":
        import torch
        torch.set_num_threads(args.threads)
        torch.set_grad_enabled(False)
    run = mlx_run if args.worker == "mlx" else torch_run
    result = run(args.sizes[0], args.batches[0], args.steps_timed, args.dtype)
    # the process's resident peak (Linux reports KB): weights, activations, allocator caches
    result["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("RESULT " + json.dumps(result))


def total_s(run: dict) -> float:
    """A run's seconds for its whole batch: text, the plan's 12 steps, decode."""
    return run["text"] + STEPS * statistics.mean(run["step"]) + run["decode"]


def flops_per_image(size: str) -> dict:
    """Two text rows (prompt, negative), 12 guided U-ViT passes (two rows each), one decode."""
    uvit_cfg, vq_cfg, text_cfg = parts(size)
    from mlx_imgen.autoencoders import AUTOENCODERS
    text = 2 * clip_text_flops(text_cfg, min(TEXT_LENGTH, text_cfg.max_positions))
    sampling = STEPS * 2 * uvit_forward_flops(uvit_cfg).total
    decode = AUTOENCODERS["diffusers-vq"].decode_flops(vq_cfg, uvit_cfg.grid_size,
                                                       uvit_cfg.grid_size)
    return {"text": text, "sampling": sampling, "decode": decode,
            "total": text + sampling + decode}


def largest_batch(rows: list[dict], limit_gb: float) -> int | None:
    """The batch whose peak, on the line through the two largest batches' peaks, reaches the
    memory limit; None with fewer than two batches."""
    if len(rows) < 2:
        return None
    (b1, p1), (b2, p2) = [(r["batch"], r["mlx"]["peak_gb"]) for r in rows[-2:]]
    per_image = (p2 - p1) / (b2 - b1)
    return None if per_image <= 0 else int(b2 + (limit_gb - p2) / per_image)


def _row(size: str, batch: int, flops: dict, repeats: int, steps_timed: int, dtype: str,
         threads: list[int]) -> dict:
    """One (size, batch) row: MLX and torch at its faster thread count (by the run's total),
    the runs interleaved `repeats` times; min and median totals, the fastest run's stages."""
    argv = ["--sizes", str(size), "--batches", str(batch), "--steps-timed", str(steps_timed),
            "--dtype", dtype]
    runs = {("mlx", 0): [], **{("torch", t): [] for t in threads}}
    for _ in range(repeats):
        for name, t in runs:
            print(f"amused-{size} batch {batch}: {name}"
                  + (f" ({t} threads)" if name == "torch" else ""), flush=True)
            runs[(name, t)].append(workers.run_worker(__file__, name, argv, t))
    torch_key = min((k for k in runs if k[0] == "torch"), key=lambda k: min(map(total_s, runs[k])))
    row = {"model": f"amused-{size}", "size": size, "batch": batch, "flops_per_image": flops,
           "torch_threads": torch_key[1]}
    for who, key in (("mlx", ("mlx", 0)), ("torch", torch_key)):
        totals = [total_s(r) for r in runs[key]]
        fastest = runs[key][totals.index(min(totals))]
        row[who] = {"total_min_s": min(totals), "total_median_s": statistics.median(totals),
                    "s_per_image": min(totals) / batch, "images_per_s": batch / min(totals),
                    "text_s": fastest["text"], "step_s": statistics.mean(fastest["step"]),
                    "decode_s": fastest["decode"], "peak_gb": fastest["peak_gb"],
                    "rss_gb": fastest["rss_gb"], "device": fastest["device"]}
    row["mlx"]["memory_limit_gb"] = runs[("mlx", 0)][0]["memory_limit_gb"]
    row["torch_over_mlx"] = row["torch"]["total_min_s"] / row["mlx"]["total_min_s"]
    return row


def measure(sizes, batches, repeats: int = 1, steps_timed: int = 2, dtype: str = "float32",
            torch_threads: list[int] | None = None, fit_row: bool = False) -> dict:
    """Rows per (size, batch) (see `_row`); the largest batch that fits MLX's memory limit,
    estimated from the two largest batches' peaks, and with `fit_row` a row run at that batch
    where it is larger than those given."""
    cores = os.cpu_count() or 1
    threads = torch_threads or sorted({1, cores})
    rows, fits = [], {}
    for size in sizes:
        flops = flops_per_image(size)
        size_rows = [_row(size, batch, flops, repeats, steps_timed, dtype, threads)
                     for batch in sorted(batches)]
        fit = largest_batch(size_rows, size_rows[-1]["mlx"]["memory_limit_gb"])
        fits[f"amused-{size}"] = fit
        if fit_row and fit and fit > size_rows[-1]["batch"]:
            size_rows.append({**_row(size, fit, flops, repeats, steps_timed, dtype, threads),
                              "largest_fit": True})
        rows += size_rows
    return {"machine": workers.machine(), "mlx": workers.mlx_setup(), "torch": torch_setup(),
            "dtype": dtype, "repeats": repeats, "steps_timed": steps_timed, "steps": STEPS,
            "rows": rows, "largest_batch_estimate": fits}


def torch_setup() -> str:
    import subprocess
    probe = "import torch, diffusers; print(torch.__version__, diffusers.__version__)"
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    versions = out.stdout.split()
    return (f"torch {versions[0]}, diffusers {versions[1]}" if len(versions) == 2
            else "torch (versions unknown)") + " without LD_PRELOAD"


def markdown(result: dict) -> str:
    text = (f"Random weights of the published shapes, {result['dtype']} (the VQ-GAN float32 in "
            f"both). Machine: {result['machine']}. MLX: {result['mlx']}. {result['torch']}, "
            "at its faster thread count. The loop is timed over "
            f"{result['steps_timed']} of its {result['steps']} equal steps and scaled; "
            f"{result['repeats']} interleaved repeat(s), the fastest run's stages. Peak: MLX's "
            "allocator, torch's CUDA allocator (none on a CPU); RSS: the process's resident "
            "peak.\n\n| model | batch | framework | text s | step s | decode s | s per image | "
            "images/s | peak GB | RSS GB | TFLOP per image | torch/MLX time |\n"
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=["256", "512"], default=["256", "512"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps-timed", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--torch-threads", nargs="+", type=int, default=None,
                        help="torch thread counts to try (default: 1 and all cores)")
    parser.add_argument("--fit-row", action="store_true",
                        help="also run each size at the largest batch estimated to fit")
    parser.add_argument("--out", default=None, help="also write amused.json and amused.md here")
    parser.add_argument("--worker", choices=["mlx", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    result = measure(args.sizes, args.batches, args.repeats, args.steps_timed, args.dtype,
                     args.torch_threads, args.fit_row)
    text = markdown(result)
    if args.out:
        from mlx_imgen.io import atomic_write_text
        os.makedirs(args.out, exist_ok=True)
        atomic_write_text(os.path.join(args.out, "amused.json"), json.dumps(result, indent=2) + "\n")
        atomic_write_text(os.path.join(args.out, "amused.md"), text)
    print(text)


if __name__ == "__main__":
    main()
