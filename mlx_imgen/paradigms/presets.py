"""Sampling presets and plan building, one table per preset family: the published defaults of
each model lineage and the function that turns sampling options (a folder's defaults with the
caller's overrides) into a sampler plan. Looked up by name in PRESET_TABLES, never by type.

`cfg` is the guidance scale s of uncond + s (cond - uncond) in every table: 1 turns guidance
off. Halton-MaskGIT publishes w of (1 + w) cond - w uncond, which is s = 1 + w: its presets keep
upstream's w and derive s from it here, so `--cfg 3` is upstream's w 2.
"""

import copy
import math
from dataclasses import dataclass
from typing import Callable

from mlx_imgen.paradigms import (Dopri5Plan, DPMSolverPlan, FlowPlan, GaussianPlan,
                                 MaskedTokenPlan, NextTokenPlan, SDEPlan)


@dataclass(frozen=True)
class PresetTable:
    defaults: dict                                # what a converted folder records
    make_plan: Callable[[object, dict], object]   # (backbone config, sampling options) -> plan


# ---------------------------------------------------------------- next-token (LlamaGen)

def _next_token_plan(config, sampling: dict):
    return NextTokenPlan(num_tokens=config.num_tokens, cfg_scale=sampling["cfg"],
                         temperature=sampling["temperature"], top_k=sampling["top_k"],
                         top_p=sampling["top_p"])


# upstream sample_c2i.py defaults; the published FIDs use cfg 1.65-2.0 and top-k 0
LLAMAGEN = PresetTable({"cfg": 4.0, "top_k": 2000, "top_p": 1.0, "temperature": 1.0},
                       _next_token_plan)

# Janus-Pro: upstream generation_inference.py (cfg_weight 5, temperature 1, no top-k or top-p
# filtering; 576 tokens at 384 px come from the backbone's grid)
JANUS = PresetTable({"cfg": 5.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0}, _next_token_plan)


# ---------------------------------------------------------------- masked-token (Halton-MaskGIT)

# `w` is upstream's guidance weight: s = 1 + w. temperature multiplies the logits (larger is
# sharper), first and last step.
MASKGIT_PRESETS = {
    # README quick start, exemple.py and app.py: the published sampling example
    "halton": dict(order="halton", steps=32, w=2.0, temperature=(1.0, 1.2), randomize=True),
    # Config/base_cls2img.yaml
    "halton-config": dict(order="halton", steps=32, w=3.0, temperature=(1.0, 1.0)),
    # launch/eval_test_to_img.sh, the FID evaluation of the large 384 px model
    "halton-eval": dict(order="halton", steps=32, w=0.5, temperature=(1.0, 1.0), warmup=1),
    # ConfidenceSampler with main.py's defaults (MaskGIT's confidence order)
    "confidence": dict(order="confidence", steps=12, w=3.0, temperature=(1.0, 1.0),
                       choice_temperature=4.5),
}


def guidance_of_w(w: float) -> float:
    """Halton-MaskGIT's w as the guidance scale s: (1 + w) cond - w uncond = uncond + s (...)."""
    return 1.0 + w


def _masked_token_plan(config, sampling: dict):
    """A MaskedTokenPlan from a preset (`sampler`) and overrides `steps`, `cfg` (s),
    `temperature` (one value for every step, or a first/last pair) and `top_k`. The preset's
    step count is lowered to the token count of a smaller grid; a given `steps` is not."""
    name = sampling.get("sampler") or "halton"
    if name not in MASKGIT_PRESETS:
        raise ValueError(f"unknown sampler {name!r} for Halton-MaskGIT; choose one of "
                         f"{', '.join(MASKGIT_PRESETS)}")
    if sampling.get("top_p") not in (None, 1.0):
        raise ValueError("Halton-MaskGIT's samplers have no top-p; use --top-k instead")
    preset = MASKGIT_PRESETS[name]
    guidance = sampling.get("cfg", guidance_of_w(preset["w"]))
    temperature = sampling.get("temperature", preset["temperature"])
    steps = sampling.get("steps")
    if steps is None:  # each step fixes at least one token
        steps = min(preset["steps"], config.num_tokens)
    elif steps > config.num_tokens:
        raise ValueError(f"--steps {steps} exceeds this model's {config.num_tokens} tokens "
                         f"(each step fixes at least one); use at most {config.num_tokens}")
    common = dict(num_tokens=config.num_tokens, steps=steps, cfg_scale=guidance,
                  temperature=temperature, temperature_mode="multiply",
                  top_k=sampling.get("top_k") or 0, schedule="arccos")
    if preset["order"] == "halton":
        # only this step's slice is written (upstream main since commit fcdc837)
        return MaskedTokenPlan(**common, order="halton", progress="after",
                               randomize_order=preset.get("randomize", False),
                               temperature_warmup=preset.get("warmup", 0))
    # upstream's confidence sampler ramps w from 0 (s from 1), counts from linspace(0, 1,
    # steps), and writes the fresh sample over the revealed tokens it keeps selected
    return MaskedTokenPlan(**common, order="confidence", progress="linspace", cfg_ramp=True,
                           choice_temperature=preset["choice_temperature"],
                           rewrite_revealed=True)


MASKGIT = PresetTable({"sampler": "halton"}, _masked_token_plan)


# ---------------------------------------------------------------- masked-token (aMUSEd)

# AmusedPipeline's defaults: 12 steps, guidance 10, choice noise annealed from 2 to 0,
# micro-conditions aesthetic score 6 and crop (0, 0)
AMUSED_DEFAULTS = {"steps": 12, "cfg": 10.0, "choice_temperature": 2.0, "aesthetic_score": 6,
                   "crop": [0, 0]}
PIXELS_PER_TOKEN = 16  # aMUSEd's VQ-GAN downsamples 16x


def _finite(name: str, value, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"--{name} {value} is not a finite number; give one such as {example}")
    return float(value)


def _amused_plan(config, sampling: dict):
    """AmusedScheduler driven by AmusedPipeline's loop: a multinomial sample at the masked
    positions; keep the most confident, log p + T_i Gumbel with T_i = linspace(T, 0)[i]; the
    masked count floor(N cos(pi/2 (i+1)/steps)) in float32. Options `steps`, `cfg` (s),
    `choice_temperature` (T), `aesthetic_score` and `crop` (top, left) of the micro-conditions,
    whose width and height are the image size."""
    option = {key: sampling.get(key, default) for key, default in AMUSED_DEFAULTS.items()}
    steps = option["steps"]
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps {steps} is not a whole number of at least 1; aMUSEd "
                         "samples in 12 by default")
    if steps > config.num_tokens:
        raise ValueError(f"--steps {steps} exceeds this model's {config.num_tokens} tokens "
                         f"(each step fixes at least one); use at most {config.num_tokens}")
    guidance = _finite("cfg", option["cfg"], "10")
    choice = _finite("choice-temperature", option["choice_temperature"], "2")
    if choice < 0:
        raise ValueError(f"--choice-temperature {choice} is negative; give 0 (no choice noise) "
                         "or more, 2 by default")
    aesthetic = _finite("aesthetic-score", option["aesthetic_score"], "6")
    crop = option["crop"]
    if not isinstance(crop, (list, tuple)) or len(crop) != 2:
        raise ValueError(f"--crop {crop} is not a (top, left) pair; give two numbers such as "
                         "0 0")
    top, left = (_finite("crop", value, "0") for value in crop)
    side = float(config.grid_size * PIXELS_PER_TOKEN)
    # AmusedPipeline guides only above 1: a scale at or below it samples the prompt's logits
    guidance = guidance if guidance > 1.0 else 1.0
    return MaskedTokenPlan(num_tokens=config.num_tokens, steps=steps, cfg_scale=guidance,
                           temperature=1.0, order="confidence", schedule="cosine",
                           progress="after", count="masked", choice_progress="linspace",
                           choice_temperature=choice,
                           micro_conditions=(side, side, top, left, aesthetic))


AMUSED = PresetTable(AMUSED_DEFAULTS, _amused_plan)


# ---------------------------------------------------------------- diffusion (DiT, SiT)

def _guided_channels(config, sampling: dict) -> int:
    """Upstream guides the first 3 of the 4 latent channels ("for exact reproducibility" of
    its training-time code); "all" guides every latent channel, as diffusers' pipeline does."""
    value = sampling.get("cfg_channels", 3)
    if value == "all":
        return config.in_channels
    if not isinstance(value, int) or not 1 <= value <= config.in_channels:
        raise ValueError(f"cfg_channels must be 'all' or 1..{config.in_channels}, got {value!r}")
    return value


DIT_SAMPLERS = ("ddpm", "ddim")


def _gaussian_plan(config, sampling: dict):
    """A GaussianPlan: `sampler` ddpm or ddim, `steps` respaced steps, `cfg`, `cfg_channels`,
    and `eta` for DDIM."""
    sampler = sampling.get("sampler") or "ddpm"
    if sampler not in DIT_SAMPLERS:
        raise ValueError(f"DiT samples with {' or '.join(DIT_SAMPLERS)}, not {sampler!r}")
    learned = (config.out_channels or config.in_channels) == 2 * config.in_channels
    return GaussianPlan(steps=sampling.get("steps") or 250, sampler=sampler,
                        cfg_scale=sampling["cfg"], eta=sampling.get("eta", 0.0),
                        variance="learned-range" if learned else "fixed-large",
                        guided_channels=_guided_channels(config, sampling))


# upstream sample.py: 250 DDPM steps, cfg 4.0; the published FID uses cfg 1.5 and the EMA VAE
DIT = PresetTable({"sampler": "ddpm", "steps": 250, "cfg": 4.0, "cfg_channels": 3},
                  _gaussian_plan)

SIT_SAMPLERS = ("sde", "euler", "heun", "dopri5")


def _flow_plan(config, sampling: dict):
    """SiT's velocity on its linear interpolant, t = 0 noise to t = 1 data, t fed unscaled.
    `steps` (250 by default) counts solver steps; upstream's --num-sampling-steps N counts
    grid points, i.e. N - 1 ODE steps, and N model calls of the SDE (its last step included).
    dopri5 picks its own steps within `atol` and `rtol`."""
    sampler = sampling.get("sampler") or "sde"
    common = dict(cfg_scale=sampling["cfg"], guided_channels=_guided_channels(config, sampling))
    if sampler == "dopri5":
        if sampling.get("steps") is not None:
            raise ValueError("dopri5 chooses its own steps; leave out --steps, or pick "
                             "--sampler euler, heun or sde")
        return Dopri5Plan(atol=sampling.get("atol", 1e-6), rtol=sampling.get("rtol", 1e-3),
                          time_scale=1.0, t_noise=0.0, **common)
    steps = sampling.get("steps") or 250
    if sampler == "sde":
        return SDEPlan(steps=steps, **common)
    if sampler in ("euler", "heun"):
        return FlowPlan(steps=steps, solver=sampler, time_scale=1.0, t_noise=0.0, **common)
    raise ValueError(f"SiT samples with {', '.join(SIT_SAMPLERS)}, not {sampler!r}")


# SiT: upstream sample.py's defaults; the SDE is the sampler of the published FID (2.06)
SIT = PresetTable({"sampler": "sde", "cfg": 4.0, "cfg_channels": 3}, _flow_plan)


# ---------------------------------------------------------------- diffusion (Sana)

# SanaPipeline's defaults: 20 steps, guidance 4.5, and the hub's scheduler: multistep
# DPM-Solver++ (order 2) on flow sigmas shifted by 3; a converted folder records the solver,
# order and shift its scheduler config names. "euler" is FlowMatchEulerDiscreteScheduler's
# spacing of the same shifted times.
SANA_DEFAULTS = {"sampler": "dpm-solver", "steps": 20, "cfg": 4.5, "shift": 3.0,
                 "solver_order": 2}
SANA_SAMPLERS = ("dpm-solver", "euler")


def _sana_plan(config, sampling: dict):
    """A DPMSolverPlan or a discrete-time Euler FlowPlan on the rectified flow, the model seeing
    diffusers' 0..1000 timesteps. SanaPipeline guides only above 1: a scale at or below it runs
    the prompt's rows alone."""
    option = {key: sampling.get(key, default) for key, default in SANA_DEFAULTS.items()}
    sampler = option["sampler"]
    if sampler not in SANA_SAMPLERS:
        raise ValueError(f"Sana samples with {' or '.join(SANA_SAMPLERS)}, not {sampler!r}")
    steps = option["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps {steps} is not a whole number of at least 1; Sana samples "
                         "in 20 by default")
    guidance = _finite("cfg", option["cfg"], "4.5")
    shift = _finite("shift", option["shift"], "3")
    if shift <= 0:
        raise ValueError(f"--shift {shift} is not positive; give the time shift, 3 by default")
    guidance = guidance if guidance > 1.0 else 1.0
    if sampler == "euler":
        return FlowPlan(steps=steps, solver="euler", shift=shift, cfg_scale=guidance,
                        schedule="discrete", time_scale=1000.0)
    return DPMSolverPlan(steps=steps, order=option["solver_order"], shift=shift,
                         cfg_scale=guidance)


SANA = PresetTable(SANA_DEFAULTS, _sana_plan)


PRESET_TABLES = {"llamagen": LLAMAGEN, "janus": JANUS, "maskgit": MASKGIT, "amused": AMUSED,
                 "dit": DIT, "sit": SIT, "sana": SANA}


def _table(name: str) -> PresetTable:
    if name not in PRESET_TABLES:
        raise ValueError(f"no sampling presets named {name!r}; choose one of "
                         f"{', '.join(PRESET_TABLES)}")
    return PRESET_TABLES[name]


def defaults(name: str) -> dict:
    """A copy of the table's sampling defaults."""
    return copy.deepcopy(_table(name).defaults)


def make_plan(name: str, config, sampling: dict):
    """The plan of table `name` for a backbone `config` and the `sampling` options."""
    return _table(name).make_plan(config, sampling)
