"""Sana-0.6B-512 and Sana-1.6B-1024 (random weights of the published shapes): the stages of a
text-to-image run, MLX against diffusers' and transformers' torch parts on this machine.

    .venv/bin/python benchmarks/sana.py [--sizes 0.6b 1.6b] [--batches 1 2] [--repeats 1]

`make bench` runs it too (benchmarks/bench.py; `--no-sana` skips it). Each framework runs in its
own process (workers.py): MLX under `python -m mlx_imgen.blas`, torch without the preload at its
faster thread count. Stages, as SanaPipeline runs them: Gemma-2-2B on the batch's prompts, each
prefixed by Sana's instruction (INSTRUCTED_TOKENS tokens, of which 300 are kept) and their empty
negative prompts (300 tokens); the sampling loop (20 DPM-Solver++ steps at guidance 4.5: each
step one transformer pass over the doubled batch with the caption mask, then the solver's
update; torch runs diffusers' SanaTransformer2DModel and DPMSolverMultistepScheduler with flow
sigmas); the DC-AE decode, float32, one image at a time on a CPU (as `generate` decodes there).
Every step costs the same, so the loop is timed over `--steps-timed` steps after a warm-up run
and scaled to 20. The rest of the machinery (rows, the largest batch that fits, the table) is
benchmarks/stages.py's.
"""

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stages  # noqa: E402  (beside this script)
import workers  # noqa: E402,F401  (tests replace its workers)
from mlx_imgen.autoencoders.dc_ae import DCAEConfig  # noqa: E402
from mlx_imgen.families.sana import config_for  # noqa: E402
from mlx_imgen.flops import gemma_text_flops, sana_forward_flops  # noqa: E402
from mlx_imgen.text.gemma import GEMMA2_2B  # noqa: E402
from mlx_imgen.text.gemma_prompts import (INSTRUCTION_TOKENS, MAX_TOKENS,  # noqa: E402
                                           STAND_IN_PROMPT_TOKENS, instructed_length,
                                           kept_positions)

STEPS, GUIDANCE, SHIFT = 20, 4.5, 3.0
IMAGE_SIZES = {"0.6b": 512, "1.6b": 1024}
# the instruction-prefixed prompt row as SanaPipeline pads it, from the prefix's estimated
# token count (random-weight runs have no Gemma tokenizer), as `profile` lays it out
INSTRUCTED_TOKENS = instructed_length(INSTRUCTION_TOKENS)


def parts(size: str):
    """The transformer, DC-AE and Gemma configs of a published size (tests pass tiny ones),
    and the length of an instruction-prefixed prompt row."""
    return config_for(size, IMAGE_SIZES[size]), DCAEConfig(), GEMMA2_2B, INSTRUCTED_TOKENS


def transformer_kwargs(config) -> dict:
    return {k: v for k, v in config.to_dict().items()}


def dc_ae_kwargs(config) -> dict:
    """AutoencoderDC's arguments for the same decoder (its encoder mirrors it, unused)."""
    stages_ = len(config.decoder_block_out_channels)
    return dict(in_channels=config.in_channels, latent_channels=config.latent_channels,
                attention_head_dim=config.attention_head_dim,
                decoder_block_types=list(config.decoder_block_types),
                decoder_block_out_channels=list(config.decoder_block_out_channels),
                decoder_layers_per_block=list(config.decoder_layers_per_block),
                decoder_qkv_multiscales=[list(s) for s in config.decoder_qkv_multiscales],
                encoder_block_types=list(config.decoder_block_types),
                encoder_block_out_channels=list(config.decoder_block_out_channels),
                encoder_layers_per_block=[1] * stages_,
                encoder_qkv_multiscales=[list(s) for s in config.decoder_qkv_multiscales],
                upsample_block_type="interpolate", downsample_block_type="Conv",
                decoder_norm_types="rms_norm", decoder_act_fns="silu",
                scaling_factor=config.scaling_factor)


def gemma_kwargs(config) -> dict:
    return dict(hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
                intermediate_size=config.intermediate_size,
                num_attention_heads=config.num_attention_heads,
                num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
                vocab_size=config.vocab_size, rms_norm_eps=config.rms_norm_eps,
                rope_theta=config.rope_theta,
                query_pre_attn_scalar=int(config.query_pre_attn_scalar),  # an int in transformers
                attn_logit_softcapping=config.attn_logit_softcapping,
                sliding_window=config.sliding_window, hidden_activation="gelu_pytorch_tanh")


def text_rows(config, batch: int, instructed: int):
    """(prompt ids (B, instructed), prompt mask, negative ids (B, 300), negative mask): BOS, a
    stand-in prompt of STAND_IN_PROMPT_TOKENS after the instruction's, padding after; the empty
    negative prompt is BOS and padding."""
    import numpy as np
    rng = np.random.default_rng(0)
    pad, bos = 0, 2
    prompt = np.full((batch, instructed), pad, dtype=np.int64)
    words = instructed - MAX_TOKENS + 2 + STAND_IN_PROMPT_TOKENS
    prompt[:, 0] = bos
    prompt[:, 1:words] = rng.integers(4, config.vocab_size, (batch, words - 1))
    negative = np.full((batch, MAX_TOKENS), pad, dtype=np.int64)
    negative[:, 0] = bos
    return prompt, (prompt != pad).astype(np.int64), negative, (negative != pad).astype(np.int64)


def kept(states, mask):
    """BOS and the last 299 positions, as SanaPipeline keeps them."""
    index = kept_positions(states.shape[1]).tolist()
    return states[:, index], mask[:, index]


# ---------------------------------------------------------------- MLX

def mlx_run(size: str, batch: int, steps_timed: int, dtype: str) -> dict:
    import mlx.core as mx
    from mlx_imgen.autoencoders import AUTOENCODERS
    from mlx_imgen.paradigms import diffusion
    from mlx_imgen.paradigms.conditions import CrossAttentionText
    from mlx_imgen.pipeline import default_decode_batch
    from mlx_imgen.sana import SanaTransformer
    from mlx_imgen.text.gemma import GemmaTextEncoder
    from mlx_imgen.weights.dtypes import DTYPES

    sana_cfg, ae_cfg, text_cfg, instructed = parts(size)
    mx.random.seed(0)
    model, text = SanaTransformer(sana_cfg), GemmaTextEncoder(text_cfg)
    model.set_dtype(DTYPES[dtype])
    text.set_dtype(DTYPES[dtype])
    ae = AUTOENCODERS["dc-ae"].model(ae_cfg)
    mx.eval(model.parameters(), text.parameters(), ae.parameters())
    plan = diffusion.DPMSolverPlan(steps=STEPS, shift=SHIFT, cfg_scale=GUIDANCE)
    ids = [mx.array(a.astype("int32")) for a in text_rows(text_cfg, batch, instructed)]
    g = sana_cfg.sample_size
    decode_batch = default_decode_batch(batch)

    def condition():
        prompt = text.encode(ids[0], ids[1])
        states, mask = kept(prompt.hidden_states, ids[1])
        null = text.encode(ids[2], ids[3])
        cond = CrossAttentionText(states.astype(model.dtype), None,
                                  null.hidden_states.astype(model.dtype), None,
                                  mask=mask, null_mask=ids[3])
        mx.eval(cond.states, cond.null_states)
        return cond

    def run(seconds: dict, steps: int, images: int = batch) -> None:
        start = time.perf_counter()
        cond = condition()
        stages.recorded(seconds, "text", start)
        loop = diffusion.iterate(model, cond, plan, seed=0,
                                 latent_shape=(g, g, sana_cfg.in_channels))
        for _ in range(steps):
            start = time.perf_counter()
            latents = next(loop)
            mx.eval(latents)
            stages.recorded(seconds, "step", start)
        loop.close()
        start = time.perf_counter()
        for first in range(0, images, decode_batch):
            mx.eval(ae.decode_latents(latents[first:first + decode_batch]))
        stages.recorded(seconds, "decode", start)

    return stages.timed_mlx(run, steps_timed)


# ---------------------------------------------------------------- torch (diffusers)

def torch_run(size: str, batch: int, steps_timed: int, dtype: str) -> dict:
    import torch
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    sana_cfg, ae_cfg, text_cfg, instructed = parts(size)
    device, torch_dtype = stages.torch_device(), getattr(torch, dtype)
    sync = stages.torch_sync(device)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where they run (a CPU init of 4B weights is slow)
        text = Gemma2Model(Gemma2Config(**gemma_kwargs(text_cfg))).eval().to(torch_dtype)
        model = SanaTransformer2DModel(**transformer_kwargs(sana_cfg)).eval().to(torch_dtype)
        ae = AutoencoderDC(**dc_ae_kwargs(ae_cfg)).eval()  # float32, as the pipeline's
    scheduler = DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, prediction_type="flow_prediction",
        use_flow_sigmas=True, flow_shift=SHIFT, final_sigmas_type="zero")
    ids = [torch.tensor(a, device=device) for a in text_rows(text_cfg, batch, instructed)]
    g = sana_cfg.sample_size
    generator = torch.Generator(device).manual_seed(0)
    decode_batch = 1 if device == "cpu" else batch

    def run(seconds: dict, steps: int, images: int = batch) -> None:
        start = time.perf_counter()
        states, mask = kept(text(ids[0], attention_mask=ids[1])[0], ids[1])
        null = text(ids[2], attention_mask=ids[3])[0]
        context = torch.cat([null, states]).to(torch_dtype)
        context_mask = torch.cat([ids[3], mask])
        sync()
        stages.recorded(seconds, "text", start)
        scheduler.set_timesteps(STEPS, device=device)
        latents = torch.randn((batch, sana_cfg.in_channels, g, g), generator=generator,
                              device=device, dtype=torch_dtype)
        for t in scheduler.timesteps[:steps]:
            start = time.perf_counter()
            rows = torch.cat([latents] * 2)
            out = model(rows, encoder_hidden_states=context, encoder_attention_mask=context_mask,
                        timestep=t.expand(rows.shape[0]).to(torch_dtype),
                        return_dict=False)[0]
            uncond, cond = out.float().chunk(2)
            latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, latents,
                                     return_dict=False)[0].to(torch_dtype)
            sync()
            stages.recorded(seconds, "step", start)
        start = time.perf_counter()
        z = latents[:images].float() / ae.config.scaling_factor
        for first in range(0, images, decode_batch):
            ae.decode(z[first:first + decode_batch]).sample.clamp(-1, 1)
        sync()
        stages.recorded(seconds, "decode", start)

    return stages.timed_torch(run, steps_timed, device)


# ---------------------------------------------------------------- the parent

def flops_per_image(size: str) -> dict:
    """Two text rows (the instructed prompt, the negative), 20 guided transformer passes (two
    rows each) over the 300 kept caption states, one decode."""
    from mlx_imgen.autoencoders import AUTOENCODERS

    sana_cfg, ae_cfg, text_cfg, instructed = parts(size)
    g = sana_cfg.sample_size
    text = (gemma_text_flops(text_cfg, instructed).total
            + gemma_text_flops(text_cfg, MAX_TOKENS).total)
    sampling = STEPS * 2 * sana_forward_flops(sana_cfg, g, g, MAX_TOKENS).total
    decode = AUTOENCODERS["dc-ae"].decode_flops(ae_cfg, g, g)
    return {"text": text, "sampling": sampling, "decode": decode,
            "total": text + sampling + decode}


BENCH = stages.StageBench(
    name="sana", script=__file__, steps=STEPS, model_name=lambda size: (
        f"sana-{size}-{IMAGE_SIZES.get(size, '?')}"),
    mlx_run=mlx_run, torch_run=torch_run, flops_per_image=flops_per_image,
    torch_packages="torch diffusers transformers",
    preface="Random weights of the published shapes (Gemma-2-2B, the transformer; the DC-AE "
            "float32 in both)")


# the module's entry points, as bench.py and the tests call them
measure = functools.partial(stages.measure, BENCH)
markdown = functools.partial(stages.markdown, BENCH)
worker = functools.partial(stages.worker, BENCH)


if __name__ == "__main__":
    stages.main(BENCH, ["0.6b", "1.6b"], __doc__, batches=[1, 2])
