"""Convert Sana (an alias, a hub repo id, or a folder of the hub repo's files) into a pipeline
folder: transformer/ (the linear-attention DiT), autoencoder/ (the DC-AE, float32 from the
store), text_encoder/ (Gemma-2-2B-it, streamed shard by shard, quantizable) and tokenizer/ (the
repo's Gemma files).

The hub repo is a diffusers pipeline: model_index.json (SanaPipeline), transformer/, vae/,
text_encoder/ (sharded), tokenizer/ and scheduler/. The scheduler's config is not converted but
read: its solver, order and flow shift become the folder's sampling defaults (the "sana"
preset), and a scheduler the sampler does not run is refused."""

import datetime
import math
from pathlib import Path

from mlx_imgen import families
from mlx_imgen.paradigms.presets import SANA_DEFAULTS
from mlx_imgen.quantize import check_settings
from mlx_imgen.version import __version__
from mlx_imgen.weights.dtypes import resolve_dtype
from mlx_imgen.weights.jsonfile import read_json

from . import diffusers_repo as repo
from .gemma import write_gemma_encoder
from .hub import is_family_source

FAMILY = "sana"
AUTOENCODER_KIND = "dc-ae"
LAYOUT = repo.RepoLayout(
    title="Sana", pipeline_class="SanaPipeline",
    components={"transformer": ("diffusion_pytorch_model", "the Sana transformer"),
                "vae": ("diffusion_pytorch_model", "the DC-AE image decoder"),
                "text_encoder": ("model", "the Gemma-2 text encoder")},
    tokenizer_files=("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "tokenizer.model"),
    tokenizer_needs=("tokenizer.json", "tokenizer_config.json"),
    repos="Efficient-Large-Model/Sana_600M_512px_diffusers or "
          "Efficient-Large-Model/Sana_1600M_1024px_diffusers",
    aliases="sana-0.6b-512, sana-1.6b-1024", model="a Sana transformer")
# the schedulers the "sana" preset runs, and what their config must say for it to run them
DPM_SOLVER = "DPMSolverMultistepScheduler"
FLOW_EULER = "FlowMatchEulerDiscreteScheduler"
DPM_REQUIRED = {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                "final_sigmas_type": "zero", "use_karras_sigmas": False,
                "use_exponential_sigmas": False, "use_beta_sigmas": False,
                "use_lu_lambdas": False, "thresholding": False, "num_train_timesteps": 1000}
EULER_REQUIRED = {"use_dynamic_shifting": False, "use_karras_sigmas": False,
                  "use_exponential_sigmas": False, "use_beta_sigmas": False,
                  "invert_sigmas": False, "stochastic_sampling": False,
                  "num_train_timesteps": 1000}


def is_sana_folder(path: Path) -> bool:
    """A folder of a Sana hub repo's files (its model_index.json names SanaPipeline)."""
    return repo.is_pipeline_folder(path, LAYOUT)


def is_sana_source(source: str) -> bool:
    """An alias of the sana family, a Sana repo folder, or a hub repo id naming Sana."""
    return is_family_source(source, FAMILY, is_sana_folder)


def _unsupported(where: str, what: str) -> ValueError:
    return ValueError(f"{repo.SCHEDULER_CONFIG} in {where} asks for {what}, which mlx-imgen's "
                      "Sana sampler does not run (multistep DPM-Solver++ on flow sigmas, or "
                      "discrete flow-matching Euler); pass a Sana repo with its published "
                      "scheduler config")


def _check_values(config: dict, required: dict, where: str) -> None:
    for key, wanted in required.items():
        if key in config and config[key] != wanted and config[key] is not None:
            raise _unsupported(where, f"{key} {config[key]!r} (not {wanted!r})")


def sampling_from_scheduler(config: dict | None, where: str) -> dict:
    """The sampling defaults a scheduler config gives: solver, order and shift, over the
    preset's (no config: the preset's own, SanaPipeline's DPM-Solver++ with shift 3)."""
    if config is None:
        return dict(SANA_DEFAULTS)
    name = config.get("_class_name")
    if name == DPM_SOLVER:
        _check_values(config, DPM_REQUIRED, where)
        order = config.get("solver_order", 2)
        if order not in (1, 2):
            raise _unsupported(where, f"solver_order {order!r} (1 or 2 run)")
        shift = config.get("flow_shift", 1.0)
        sampler = {"sampler": "dpm-solver", "solver_order": order}
    elif name == FLOW_EULER:
        _check_values(config, EULER_REQUIRED, where)
        shift = config.get("shift", 1.0)
        sampler = {"sampler": "euler"}
    else:
        raise _unsupported(where, f"the scheduler {name!r}")
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) \
            or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"{repo.SCHEDULER_CONFIG} in {where} has the time shift {shift!r}, "
                         "not a positive number; download it again")
    return {**SANA_DEFAULTS, **sampler, "shift": float(shift)}


def convert_sana(source: str, out: Path, *, dtype: str | None = None,
                 quantize: int | None = None, group_size: int = 64,
                 revision: str | None = None, force: bool = False,
                 variant: str | None = None, text_quantize: int | None = None) -> Path:
    """`source` (a sana alias, a hub repo id or a local repo folder) into the pipeline folder
    `out` (the caller holds the lock on `out`). `quantize` quantizes the transformer and, unless
    `text_quantize` says otherwise, the Gemma text encoder; `variant` "fp16" reads the fp16
    weights first."""
    repo.weights_names("", variant)  # refuses an unknown variant before anything is read
    dtype = resolve_dtype(dtype)
    text_quantize = quantize if text_quantize is None else text_quantize
    for bits in (quantize, text_quantize):
        if bits:
            check_settings(bits, group_size)
    fam = families.get(FAMILY)
    card, files = repo.card_and_files(LAYOUT, FAMILY, source, out, revision, variant)
    files.check_tokenizer()
    scheduler = None if files.scheduler is None else \
        read_json(files.scheduler, "download it again")
    sampling = sampling_from_scheduler(scheduler, files.where)

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = {"mlx_imgen_version": __version__, "created": created}
    # the small parts first: a broken DC-AE fails before the text encoder and transformer load
    stored_ae = repo.stored_autoencoder(files, "vae", AUTOENCODER_KIND, common)
    text = write_gemma_encoder(files.state("text_encoder"),
                               read_json(files.configs["text_encoder"], "download it again"),
                               files.source("text_encoder"), dtype=dtype,
                               quantize=text_quantize or None, group_size=group_size,
                               settings=common, where=f"text_encoder/config.json in "
                                                      f"{files.where}")
    transformer = repo.stream_transformer(files, fam, dtype, quantize, group_size)
    return repo.write_converted(out, files, fam, card, sampling=sampling, common=common,
                                transformer=transformer, stored_ae=stored_ae, text=text,
                                dtype=dtype, force=force)
