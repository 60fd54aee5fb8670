"""A tiny Sana hub repo for the tests, every component made by its upstream library: a diffusers
SanaTransformer2DModel (transformer/, tests/sana_files.py), a diffusers AutoencoderDC (vae/,
tests/dc_ae_files.py), transformers' Gemma2Model in two shards with their index (text_encoder/,
tests/gemma_files.py), a trained tokenizer in Gemma's layout (tokenizer/), the scheduler config
and model_index.json. The shapes chain as in the published model: the transformer reads the
text encoder's width as its caption channels and the DC-AE's latent channels."""

import copy
import json
from pathlib import Path

from dc_ae_files import save_vae, tiny_dc_ae
from gemma_files import TINY as GEMMA, tiny_gemma, write_gemma_tokenizer, write_text_encoder_folder
from sana_files import save_transformer, tiny_sana

LATENT_CHANNELS = 4
DOWNSAMPLE = 8                # the tiny DC-AE's 4 stages
GRID = 4                      # 4 x 4 latents: 32 px images
TRANSFORMER = dict(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                   caption_channels=GEMMA["hidden_size"], sample_size=GRID)
MODEL_INDEX = {"_class_name": "SanaPipeline", "_diffusers_version": "0.32.0",
               "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
               "text_encoder": ["transformers", "Gemma2Model"],
               "tokenizer": ["transformers", "GemmaTokenizerFast"],
               "transformer": ["diffusers", "SanaTransformer2DModel"],
               "vae": ["diffusers", "AutoencoderDC"]}
# Sana_600M_512px_diffusers' scheduler, as SanaPipeline runs it
SCHEDULER = {"_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.32.0",
             "algorithm_type": "dpmsolver++", "beta_end": 0.02, "beta_schedule": "linear",
             "beta_start": 0.0001, "euler_at_final": False, "final_sigmas_type": "zero",
             "flow_shift": 3.0, "lower_order_final": True, "num_train_timesteps": 1000,
             "prediction_type": "flow_prediction", "solver_order": 2, "solver_type": "midpoint",
             "steps_offset": 0, "thresholding": False, "timestep_spacing": "linspace",
             "use_flow_sigmas": True, "use_karras_sigmas": False}


def write_tiny_sana(folder, *, seed: int = 0, leave_out: tuple[str, ...] = (),
                    scheduler: dict | None = None, fp16_transformer: bool = False) -> dict:
    """The repo's files under `folder`; returns the torch models by component. `leave_out`
    skips components; `scheduler` replaces the scheduler config (None: SCHEDULER);
    `fp16_transformer` adds the transformer's `.fp16` variant."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    models = {}
    if "transformer" not in leave_out:
        models["transformer"] = tiny_sana(seed, **TRANSFORMER)
        save_transformer(models["transformer"], folder)
        if fp16_transformer:
            copy.deepcopy(models["transformer"]).half().save_pretrained(
                folder / "transformer", variant="fp16")
    if "vae" not in leave_out:
        models["vae"] = tiny_dc_ae(seed + 1, latent_channels=LATENT_CHANNELS)
        save_vae(models["vae"], folder)
    if "text_encoder" not in leave_out:
        models["text_encoder"] = tiny_gemma(seed + 2)
        write_text_encoder_folder(models["text_encoder"], folder / "text_encoder")
    if "tokenizer" not in leave_out:
        write_gemma_tokenizer(folder / "tokenizer")
    if "scheduler" not in leave_out:
        (folder / "scheduler").mkdir(exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(scheduler or SCHEDULER, indent=2))
    return models
