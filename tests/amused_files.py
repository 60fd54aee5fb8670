"""A tiny aMUSEd hub repo for the tests, every component made by its upstream library: a
diffusers UVit2DModel (transformer/, tests/uvit_files.py), a diffusers VQModel (vqvae/,
tests/diffusers_vq_files.py), transformers' CLIPTextModelWithProjection (text_encoder/,
tests/clip_files.py), a trained CLIP tokenizer (tokenizer/), the scheduler config and
model_index.json, each weights file in float32 and as diffusers' and
transformers' `.fp16` variant. The shapes chain as in the published model: the U-ViT
cross-attends to the text tower's width, its pooled condition is the projection's width, and
it scores the VQ's codebook."""

import copy
import json
from pathlib import Path

import torch

from clip_files import TEXT, write_tiny_clip
from clip_tokenizer_files import write_clip_tokenizer
from diffusers_vq_files import save_vqvae, tiny_vq
from uvit_files import save_transformer, tiny_uvit

CODEBOOK = 32                 # the tiny VQ's codes
MASK_ID = CODEBOOK            # the embedding's last row, as 8255 of 8256
PROJECTION = 16               # the text tower's projection: the U-ViT's cond_embed_dim
GRID = 4                      # 4 x 4 tokens: 16 px images through the VQ's 4x decoder
# uvit_files' tiny U-ViT, chained to the text tower's width and the tiny VQ's codebook
UVIT = dict(encoder_hidden_size=TEXT["hidden_size"], cond_embed_dim=PROJECTION,
            vocab_size=CODEBOOK + 1, codebook_size=CODEBOOK, sample_size=GRID)
MODEL_INDEX = {"_class_name": "AmusedPipeline", "_diffusers_version": "0.25.0",
               "scheduler": ["diffusers", "AmusedScheduler"],
               "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
               "tokenizer": ["transformers", "CLIPTokenizer"],
               "transformer": ["diffusers", "UVit2DModel"], "vqvae": ["diffusers", "VQModel"]}
COMPONENTS = ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler")


def _save_fp16_variant(model, folder: Path) -> None:
    """The `.fp16` file, from a copy: .half() works in place, and the float32 model stays the
    reference."""
    copy.deepcopy(model).half().save_pretrained(folder, variant="fp16")


def write_tiny_amused(folder, *, seed: int = 0, leave_out: tuple[str, ...] = (),
                      fp16_only: bool = False, scheduler: dict | None = None,
                      vq_overflow: str | None = None) -> dict:
    """The repo's files under `folder`; returns the torch models by component. `leave_out`
    skips components, `fp16_only` keeps only the .fp16 weights, `scheduler` overrides the
    scheduler config's values. `vq_overflow` "fp16" writes only a VQ fp16 file holding inf (a
    weight past float16's range, as an fp16 export of an overflowing model has); "decode" a
    VQ whose finite float32 output convolution overflows float32 when it decodes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    models = {}
    if "transformer" not in leave_out:
        models["transformer"] = tiny_uvit(seed, **UVIT)
        save_transformer(models["transformer"], folder)
    if "vqvae" not in leave_out:
        models["vqvae"] = tiny_vq(seed + 1, num_vq_embeddings=CODEBOOK)
        with torch.no_grad():
            if vq_overflow == "fp16":
                models["vqvae"].decoder.conv_out.weight[0, 0, 0, 0] = 1e6
            elif vq_overflow == "decode":
                models["vqvae"].decoder.conv_out.weight.fill_(3e38)
        save_vqvae(models["vqvae"], folder)
    if "text_encoder" not in leave_out:
        models["text_encoder"] = write_tiny_clip(folder / "text_encoder",
                                                 kind="text_with_projection", seed=seed + 2,
                                                 projection_dim=PROJECTION)
        _save_fp16_variant(models["text_encoder"], folder / "text_encoder")
    if "tokenizer" not in leave_out:
        write_clip_tokenizer(folder / "tokenizer", tokenizer_json=False)
    if "scheduler" not in leave_out:
        (folder / "scheduler").mkdir(exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
            {"_class_name": "AmusedScheduler", "_diffusers_version": "0.25.0",
             "mask_token_id": MASK_ID, "masking_schedule": "cosine", **(scheduler or {})}))
    if fp16_only or vq_overflow == "fp16":
        for path in folder.glob("*/*.safetensors"):
            if ".fp16." not in path.name and (fp16_only or path.parent.name == "vqvae"):
                path.unlink()
    return models


def repo_files(folder) -> dict[str, Path]:
    """Every file of a repo folder by its path in the repo, for tests/hubcache.py."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}
