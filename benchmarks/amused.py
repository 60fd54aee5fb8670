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

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stages  # noqa: E402  (beside this script)
import workers  # noqa: E402,F401  (tests replace its workers)
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
        stages.recorded(seconds, "text", start)
        loop = masked_token.iterate(model, cond, plan, seed=0)
        for _ in range(steps):
            start = time.perf_counter()
            tokens = next(loop).tokens  # the loop evaluates each step before yielding it
            stages.recorded(seconds, "step", start)
        loop.close()
        start = time.perf_counter()
        decode(tokens[:images])
        stages.recorded(seconds, "decode", start)

    return stages.timed_mlx(run, steps_timed)


# ---------------------------------------------------------------- torch (diffusers)

def torch_run(size: str, batch: int, steps_timed: int, dtype: str) -> dict:
    import torch
    from diffusers import AmusedScheduler, UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    uvit_cfg, vq_cfg, text_cfg = parts(size)
    device, torch_dtype = stages.torch_device(), getattr(torch, dtype)
    sync = stages.torch_sync(device)
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
        stages.recorded(seconds, "text", start)
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
            stages.recorded(seconds, "step", start)
        start = time.perf_counter()
        codes = torch.where(latents == uvit_cfg.mask_id, 0, latents)[:images]
        vq.decode(codes, force_not_quantize=True,
                  shape=(images, g, g, vq_cfg.vq_embed_dim)).sample.clip(0, 1)
        sync()
        stages.recorded(seconds, "decode", start)

    return stages.timed_torch(run, steps_timed, device)


# ---------------------------------------------------------------- the parent

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


BENCH = stages.StageBench(
    name="amused", script=__file__, steps=STEPS, model_name=lambda size: f"amused-{size}",
    mlx_run=mlx_run, torch_run=torch_run, flops_per_image=flops_per_image,
    torch_packages="torch diffusers",
    preface="Random weights of the published shapes (the VQ-GAN float32 in both)")


# the module's entry points, as bench.py and the tests call them
measure = functools.partial(stages.measure, BENCH)
markdown = functools.partial(stages.markdown, BENCH)
worker = functools.partial(stages.worker, BENCH)


if __name__ == "__main__":
    stages.main(BENCH, ["256", "512"], __doc__, batches=[1, 4])
