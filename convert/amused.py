"""Convert aMUSEd (an alias, a hub repo id, or a folder of the hub repo's files) into a pipeline
folder: transformer/ (the U-ViT), autoencoder/ (the VQ-GAN, float32 from the store),
text_encoder/ (CLIP-L's text tower with its projection) and tokenizer/ (the repo's CLIP files).

The hub repo is a diffusers pipeline: model_index.json, transformer/, vqvae/, text_encoder/,
tokenizer/ and scheduler/. Each weights file is read in float32 where the repo has it, else its
`.fp16` variant (or the variant first when asked). The scheduler's config is checked, not
converted: aMUSEd's sampler is the "amused" preset, which only runs the cosine schedule, and the
mask id must be one the transformer embeds."""

import datetime
from pathlib import Path

from mlx_imgen import families
from mlx_imgen.quantize import check_settings
from mlx_imgen.text.clip import configs_from_hf
from mlx_imgen.text.clip_keys import clip_weights_from_hf
from mlx_imgen.version import __version__
from mlx_imgen.weights.dtypes import resolve_dtype
from mlx_imgen.weights.jsonfile import read_json

from . import diffusers_repo as repo
from .clip import write_text_encoder
from .hub import is_family_source

FAMILY = "amused"
AUTOENCODER_KIND = "diffusers-vq"
SCHEDULES = ("cosine",)             # what the "amused" preset's count rule computes
LAYOUT = repo.RepoLayout(
    title="aMUSEd", pipeline_class="AmusedPipeline",
    components={"transformer": ("diffusion_pytorch_model", "the U-ViT"),
                "vqvae": ("diffusion_pytorch_model", "the VQ-GAN image decoder"),
                "text_encoder": ("model", "the CLIP text encoder")},
    tokenizer_files=("vocab.json", "merges.txt", "special_tokens_map.json",
                     "tokenizer_config.json"),
    tokenizer_needs=("vocab.json", "merges.txt"),
    repos="amused/amused-256 or amused/amused-512", aliases="amused-256, amused-512",
    model="an aMUSEd U-ViT")


def is_amused_folder(path: Path) -> bool:
    """A folder of an aMUSEd hub repo's files (its model_index.json names AmusedPipeline)."""
    return repo.is_pipeline_folder(path, LAYOUT)


def is_amused_source(source: str) -> bool:
    """An alias of the amused family, an aMUSEd repo folder, or a hub repo id naming aMUSEd."""
    return is_family_source(source, FAMILY, is_amused_folder)


def mask_token_id(files: repo.RepoFiles) -> int | None:
    """The scheduler's mask id, after checking its schedule is one the preset runs; None where
    the repo has no scheduler config (the transformer's own mask id is used)."""
    if files.scheduler is None:
        return None
    config = read_json(files.scheduler, "download it again")
    schedule = config.get("masking_schedule", "cosine")
    if schedule not in SCHEDULES:
        raise ValueError(f"{repo.SCHEDULER_CONFIG} in {files.where} asks for the masking schedule "
                         f"{schedule!r}, but aMUSEd's sampler runs only {', '.join(SCHEDULES)}; "
                         "pass an aMUSEd repo with its published scheduler config")
    mask_id = config.get("mask_token_id")
    if mask_id is not None and (isinstance(mask_id, bool) or not isinstance(mask_id, int)):
        raise ValueError(f"{repo.SCHEDULER_CONFIG} in {files.where} has mask_token_id {mask_id!r}, "
                         "not a token id; download it again")
    return mask_id


def check_mask_id(config, mask_id: int | None, where: str) -> None:
    """The scheduler's mask id must be the row the transformer embeds the mask with: its
    embedding's last row, after the codebook (8255 of 8256 for both published models)."""
    if mask_id is None or mask_id == config.mask_id:
        return
    rows = config.embed_vocab_size
    embeddable = config.codebook_size <= mask_id < rows
    raise ValueError(f"{repo.SCHEDULER_CONFIG} in {where} has mask_token_id {mask_id}, which the "
                     f"transformer {'does not mask with' if embeddable else 'cannot embed'} "
                     f"(its embedding has {rows} rows: codes 0..{config.codebook_size - 1}, the "
                     f"mask {config.mask_id}); pass the scheduler config of these weights")


def _text_encoder(files: repo.RepoFiles, dtype, quantize, group_size, settings):
    """The text_encoder/ component: CLIP's text tower with its projection."""
    hf_config = read_json(files.configs["text_encoder"], "download it again")
    text_config, _ = configs_from_hf(hf_config)
    if text_config is None or text_config.projection_dim is None:
        raise ValueError(f"text_encoder/config.json in {files.where} describes no "
                         "CLIPTextModelWithProjection (aMUSEd conditions on the projected "
                         "pooled text); pass the amused repo's text_encoder/ folder")
    state = files.state("text_encoder")
    parts = clip_weights_from_hf(state, lazy=True)
    del state
    if "text" not in parts:
        raise ValueError(f"{files.file_name('text_encoder')} in {files.where} "
                         "holds no CLIP text tower; download it again")
    return write_text_encoder(parts["text"], text_config, files.source("text_encoder"),
                              dtype=dtype, quantize=quantize, group_size=group_size,
                              settings=settings)


def convert_amused(source: str, out: Path, *, dtype: str | None = None,
                   quantize: int | None = None, group_size: int = 64,
                   revision: str | None = None, force: bool = False,
                   variant: str | None = None) -> Path:
    """`source` (an amused alias, a hub repo id or a local repo folder) into the pipeline folder
    `out` (the caller holds the lock on `out`). `quantize` quantizes the transformer and the
    text encoder; `variant` "fp16" reads the fp16 weights first."""
    repo.weights_names("", variant)  # refuses an unknown variant before anything is read
    dtype = resolve_dtype(dtype)
    if quantize:
        check_settings(quantize, group_size)
    fam = families.get(FAMILY)
    card, files = repo.card_and_files(LAYOUT, FAMILY, source, out, revision, variant)
    files.check_tokenizer()
    mask_id = mask_token_id(files)

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = {"mlx_imgen_version": __version__, "created": created}
    # the small parts first: an overflowed fp16 VQ-GAN fails before the U-ViT streams in
    stored_ae = repo.stored_autoencoder(files, "vqvae", AUTOENCODER_KIND, common)
    text = _text_encoder(files, dtype, quantize, group_size, common)
    transformer = repo.stream_transformer(
        files, fam, dtype, quantize, group_size,
        check=lambda config: check_mask_id(config, mask_id, files.where))
    return repo.write_converted(out, files, fam, card, sampling=dict(card.sampling if card else fam.sampling), common=common,
                                transformer=transformer, stored_ae=stored_ae, text=text,
                                dtype=dtype, force=force)
