"""Convert aMUSEd (an alias, a hub repo id, or a folder of the hub repo's files) into a pipeline
folder: transformer/ (the U-ViT), autoencoder/ (the VQ-GAN, float32 from the store),
text_encoder/ (CLIP-L's text tower with its projection) and tokenizer/ (the repo's CLIP files).

The hub repo is a diffusers pipeline: model_index.json, transformer/, vqvae/, text_encoder/,
tokenizer/ and scheduler/. Each weights file is read in float32 where the repo has it, else its
`.fp16` variant (or the variant first when asked). The scheduler's config is checked, not
converted: aMUSEd's sampler is the "amused" preset, which only runs the cosine schedule, and the
mask id must be one the transformer embeds."""

import dataclasses
import datetime
from pathlib import Path

import mlx.core as mx

from mlx_imgen import families
from mlx_imgen.quantize import check_settings
from mlx_imgen.registry import CARDS, ModelCard, Source
from mlx_imgen.text.clip import configs_from_hf
from mlx_imgen.text.clip_keys import clip_weights_from_hf
from mlx_imgen.version import __version__
from mlx_imgen.weights.dtypes import cast, resolve_dtype
from mlx_imgen.weights.jsonfile import read_json
from mlx_imgen.weights.keymap import as_mlx
from mlx_imgen.weights.readers import read_checkpoint

from . import autoencoder_store as store
from .clip import copied, write_text_encoder
from .hub import HUB_ID, download_hint, fetch, fetch_optional, is_family_source, require
from .streaming import stream_weights
from .writer import sha256_of, write_pipeline

FAMILY = "amused"
PIPELINE_CLASS = "AmusedPipeline"   # model_index.json's _class_name
AUTOENCODER_KIND = "diffusers-vq"
VARIANTS = (None, "fp16")
# component folder -> the stem of its weights file (diffusers' and transformers' names)
WEIGHTS_STEMS = {"transformer": "diffusion_pytorch_model", "vqvae": "diffusion_pytorch_model",
                 "text_encoder": "model"}
# what each component is, as a message asks the user to download it
COMPONENT_NAMES = {"transformer": "the U-ViT", "vqvae": "the VQ-GAN image decoder",
                   "text_encoder": "the CLIP text encoder"}
TOKENIZER = "tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json",
                   "tokenizer_config.json")
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
SCHEDULES = ("cosine",)             # what the "amused" preset's count rule computes


@dataclasses.dataclass
class AmusedFiles:
    """Where an aMUSEd repo's files are (hub cache or a local folder)."""
    repo: str | None
    revision: str | None
    where: str                      # how messages name it: "the hub repo X" or the folder
    configs: dict[str, Path]        # component -> its config.json
    weights: dict[str, Path]        # component -> its weights file
    tokenizer: dict[str, Path]
    scheduler: Path | None


def weights_names(component: str, variant: str | None = None) -> list[str]:
    """The weights file names of a component, in the order they are tried: float32 first (then
    the `.bin` some repos hold), the fp16 variant last, or first when `variant` asks for it."""
    stem = WEIGHTS_STEMS[component]
    full, half = [f"{stem}.safetensors", f"{stem}.bin"], [f"{stem}.fp16.safetensors"]
    return half + full if variant == "fp16" else full + half


def _pipeline_class(folder: Path) -> str | None:
    try:
        return read_json(folder / "model_index.json").get("_class_name")
    except ValueError:
        return None


def is_amused_folder(path: Path) -> bool:
    """A folder of an aMUSEd hub repo's files (its model_index.json names AmusedPipeline)."""
    return path.is_dir() and _pipeline_class(path) == PIPELINE_CLASS


def is_amused_source(source: str) -> bool:
    """An alias of the amused family, an aMUSEd repo folder, or a hub repo id naming aMUSEd."""
    return is_family_source(source, FAMILY, is_amused_folder)


def _hint(repo: str, out: Path | None) -> str:
    return download_hint(repo, "the repo's model_index.json and its transformer/, vqvae/, "
                         "text_encoder/, tokenizer/ and scheduler/ folders (keeping their "
                         "paths)", out)


def hub_files(repo: str, revision: str | None, out: Path | None,
              variant: str | None = None) -> AmusedFiles:
    """An aMUSEd repo's files fetched into the hub cache (failing at once offline when they are
    not cached)."""
    hint = _hint(repo, out)
    require([Source(repo, "transformer/config.json", revision)], hint)
    configs, weights = {}, {}
    for component in WEIGHTS_STEMS:
        configs[component] = fetch(repo, f"{component}/config.json", revision, local_hint=hint)
        names = weights_names(component, variant)
        found = next((p for n in names
                      if (p := fetch_optional(repo, f"{component}/{n}", revision, hint))), None)
        if found is None:
            raise ValueError(f"the hub repo {repo} holds none of {component}/{names[0]} or its "
                             f"variants (or they are not cached and the hub cannot be reached); "
                             f"{hint}")
        weights[component] = found
    tokenizer = {n: p for n in TOKENIZER_FILES
                 if (p := fetch_optional(repo, f"{TOKENIZER}/{n}", revision, hint))}
    scheduler = fetch_optional(repo, SCHEDULER_CONFIG, revision, hint)
    return AmusedFiles(repo, revision, f"the hub repo {repo}", configs, weights, tokenizer,
                       scheduler)


def _missing_component(folder: Path, component: str, what: str) -> ValueError:
    return ValueError(f"{folder} has no {component}/ folder ({what}); download the {component}/ "
                      "folder of amused/amused-256 or amused/amused-512 (the one this folder "
                      "came from) into it")


def local_files(folder: Path, variant: str | None = None) -> AmusedFiles:
    """A folder of an aMUSEd repo's files in the hub layout; a component it lacks is refused,
    naming the folder to download, before anything is read."""
    configs, weights = {}, {}
    for component in WEIGHTS_STEMS:
        names = weights_names(component, variant)
        chosen = next((folder / component / n for n in names
                       if (folder / component / n).is_file()), None)
        if not (folder / component / "config.json").is_file() or chosen is None:
            raise _missing_component(folder, component, f"{COMPONENT_NAMES[component]}: "
                                     f"config.json and {names[0]}")
        configs[component], weights[component] = folder / component / "config.json", chosen
    tokenizer = {n: folder / TOKENIZER / n for n in TOKENIZER_FILES
                 if (folder / TOKENIZER / n).is_file()}
    if not tokenizer:
        raise _missing_component(folder, TOKENIZER, "CLIP's vocab.json, merges.txt and their "
                                 "config files")
    scheduler = folder / SCHEDULER_CONFIG
    return AmusedFiles(None, None, str(folder), configs, weights, tokenizer,
                       scheduler if scheduler.is_file() else None)


def _check_tokenizer(files: AmusedFiles) -> None:
    missing = [n for n in ("vocab.json", "merges.txt") if n not in files.tokenizer]
    if missing:
        raise ValueError(f"{files.where} has no {TOKENIZER}/{missing[0]}; download the "
                         f"{TOKENIZER}/ folder ({', '.join(TOKENIZER_FILES)}) into it")


def mask_token_id(files: AmusedFiles) -> int | None:
    """The scheduler's mask id, after checking its schedule is one the preset runs; None where
    the repo has no scheduler config (the transformer's own mask id is used)."""
    if files.scheduler is None:
        return None
    config = read_json(files.scheduler, "download it again")
    schedule = config.get("masking_schedule", "cosine")
    if schedule not in SCHEDULES:
        raise ValueError(f"{SCHEDULER_CONFIG} in {files.where} asks for the masking schedule "
                         f"{schedule!r}, but aMUSEd's sampler runs only {', '.join(SCHEDULES)}; "
                         "pass an aMUSEd repo with its published scheduler config")
    mask_id = config.get("mask_token_id")
    if mask_id is not None and (isinstance(mask_id, bool) or not isinstance(mask_id, int)):
        raise ValueError(f"{SCHEDULER_CONFIG} in {files.where} has mask_token_id {mask_id!r}, "
                         "not a token id; download it again")
    return mask_id


def check_mask_id(config, mask_id: int | None, where: str) -> None:
    """The scheduler's mask id must be the row the transformer embeds the mask with: its
    embedding's last row, after the codebook (8255 of 8256 for both published models)."""
    if mask_id is None or mask_id == config.mask_id:
        return
    rows = config.embed_vocab_size
    embeddable = config.codebook_size <= mask_id < rows
    raise ValueError(f"{SCHEDULER_CONFIG} in {where} has mask_token_id {mask_id}, which the "
                     f"transformer {'does not mask with' if embeddable else 'cannot embed'} "
                     f"(its embedding has {rows} rows: codes 0..{config.codebook_size - 1}, the "
                     f"mask {config.mask_id}); pass the scheduler config of these weights")


def _source(files: AmusedFiles, component: str) -> dict:
    path = files.weights[component]
    return {"repo": files.repo, "revision": files.revision, "file": f"{component}/{path.name}",
            "sha256": sha256_of(path)}


def _transformer(files: AmusedFiles, fam, mask_id, dtype, quantize, group_size):
    """(config, weights, quantization record) of the U-ViT, streamed one tensor at a time."""
    path = files.weights["transformer"]
    state = read_checkpoint(path).state
    if fam.layout(state) is None:
        found = ", ".join(sorted(state)[:3]) or "none"
        raise ValueError(f"transformer/{path.name} in {files.where} is not an aMUSEd U-ViT: "
                         f"expected keys {', '.join(fam.signature)}, found keys like {found}; "
                         "pass the amused repo's transformer/ folder")
    hints = {"config_json": read_json(files.configs["transformer"], "download it again")}
    try:
        config = fam.infer_config(state, hints)
    except KeyError as err:  # a key the layout always has
        raise ValueError(f"transformer/{path.name} in {files.where} lacks {err.args[0]}, which "
                         "every aMUSEd U-ViT has; download it again") from None
    check_mask_id(config, mask_id, files.where)
    sources = fam.weights_from_upstream(state, lazy=True)
    del state
    weights, record = stream_weights(config, sources, dtype, quantize, group_size,
                                     f"transformer/{path.name} (as amused)",
                                     model_class=fam.model_class)
    return config, weights, record


def _text_encoder(files: AmusedFiles, dtype, quantize, group_size, settings):
    """The text_encoder/ component: CLIP's text tower with its projection."""
    hf_config = read_json(files.configs["text_encoder"], "download it again")
    text_config, _ = configs_from_hf(hf_config)
    if text_config is None or text_config.projection_dim is None:
        raise ValueError(f"text_encoder/config.json in {files.where} describes no "
                         "CLIPTextModelWithProjection (aMUSEd conditions on the projected "
                         "pooled text); pass the amused repo's text_encoder/ folder")
    state = read_checkpoint(files.weights["text_encoder"]).state
    parts = clip_weights_from_hf(state, lazy=True)
    del state
    if "text" not in parts:
        raise ValueError(f"text_encoder/{files.weights['text_encoder'].name} in {files.where} "
                         "holds no CLIP text tower; download it again")
    return write_text_encoder(parts["text"], text_config, _source(files, "text_encoder"),
                              dtype=dtype, quantize=quantize, group_size=group_size,
                              settings=settings)


def _autoencoder(files: AmusedFiles, settings: dict) -> store.StoredAutoencoder:
    """The VQ-GAN from the store (converted on first use), always float32: an fp16 variant is
    widened as it is read, because aMUSEd's VQ-GAN overflows in float16."""
    path = files.weights["vqvae"]
    config_json = read_json(files.configs["vqvae"], "download it again")
    state = {k: cast(as_mlx(v), "float32") for k, v in read_checkpoint(path).state.items()}
    overflowed = next((k for k, v in state.items() if not mx.all(mx.isfinite(v)).item()), None)
    if overflowed is not None:
        raise ValueError(f"vqvae/{path.name} in {files.where} holds non-finite weights "
                         f"({overflowed}: values past float16's range became inf), which decode "
                         f"to NaN; download the float32 vqvae/{weights_names('vqvae')[0]} "
                         "instead")
    record = _source(files, "vqvae")
    return store.stored(AUTOENCODER_KIND, path, record["sha256"], record, config_json, settings,
                        state=state)


def _files(source: str, card: ModelCard | None, out: Path, revision: str | None,
           variant: str | None) -> AmusedFiles:
    path = Path(source)
    if card is not None:
        return hub_files(card.transformer.repo, revision or card.transformer.revision, out,
                         variant)
    if path.is_dir():
        return local_files(path, variant)
    if path.exists():
        raise ValueError(f"{source} is a file; pass the folder of a downloaded aMUSEd repo "
                         "(model_index.json, transformer/, vqvae/, text_encoder/, tokenizer/)")
    if HUB_ID.fullmatch(source):
        return hub_files(source, revision, out, variant)
    raise ValueError(f"{source} does not exist; pass amused-256, amused-512, a hub repo id or "
                     "the folder of a downloaded aMUSEd repo")


def convert_amused(source: str, out: Path, *, dtype: str | None = None,
                   quantize: int | None = None, group_size: int = 64,
                   revision: str | None = None, force: bool = False,
                   variant: str | None = None) -> Path:
    """`source` (an amused alias, a hub repo id or a local repo folder) into the pipeline folder
    `out` (the caller holds the lock on `out`). `quantize` quantizes the transformer and the
    text encoder; `variant` "fp16" reads the fp16 weights first."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown weights variant {variant!r}; pass fp16 or leave it out")
    dtype = resolve_dtype(dtype)
    if quantize:
        check_settings(quantize, group_size)
    fam = families.get(FAMILY)
    card: ModelCard | None = CARDS.get(source)
    files = _files(source, card, out, revision, variant)
    if card is None and files.repo is not None:
        card = next((c for c in CARDS.values() if c.family == FAMILY
                     and c.transformer.repo == files.repo), None)
    _check_tokenizer(files)
    mask_id = mask_token_id(files)

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = {"mlx_imgen_version": __version__, "created": created}
    # the small parts first: an overflowed fp16 VQ-GAN fails before the U-ViT streams in
    stored_ae = _autoencoder(files, common)
    text = _text_encoder(files, dtype, quantize, group_size, common)
    config, transformer_weights, quantization = _transformer(files, fam, mask_id, dtype,
                                                              quantize, group_size)
    settings = {**common, "dtype": dtype, "quantization": quantization}
    ae_config = {**stored_ae.config, **settings, "dtype": store.DTYPE, "quantization": None}
    index = {"family": FAMILY, "paradigm": fam.paradigm, "condition": fam.condition,
             "alias": card.alias if card else None,
             "license": card.license if card else fam.license,
             "sampling": dict(card.sampling if card else fam.sampling),
             "weights": "raw", **settings}
    components = {
        "transformer": ({"family": FAMILY, "backbone": config.to_dict(),
                         "source": _source(files, "transformer"), **settings},
                        transformer_weights),
        "autoencoder": (ae_config, store.linker(stored_ae, ae_config)),
        "text_encoder": text,
        TOKENIZER: (None, copied(files.tokenizer)),
    }
    return write_pipeline(out, index, components, force=force)
