"""Sana's Gemma-2 text encoder: a hub text_encoder/ folder (transformers' Gemma2Model: config.json
and the safetensors shards model.safetensors.index.json lists, or one model.safetensors) into a
text_encoder/ component in mlx-lm's key names, streamed one tensor at a time (cast, and
quantized where asked, as it goes)."""

import re
from pathlib import Path

from mlx_imgen.text.gemma import GemmaConfig
from mlx_imgen.weights.jsonfile import read_json
from mlx_imgen.weights.readers import read_checkpoint

from .clip import write_text_encoder
from .diffusers_repo import component_weights

MODEL_TYPE = "gemma2"
WEIGHTS_STEM = "model"
# Gemma2Model's keys have no prefix; a Gemma2ForCausalLM's sit under "model." beside the
# LM head, which is the embedding's transpose (tied) and is not part of the encoder
HF_PREFIX = "model."
LEFT_OUT = re.compile(r"lm_head\..*")


def gemma_state(state: dict) -> dict:
    """{mlx-lm key: lazy tensor} of a Gemma2Model's (or Gemma2ForCausalLM's) tensors:
    transformers' keys under "model.", the LM head left out."""
    renamed = {}
    for key, tensor in state.items():
        key = key.removeprefix(HF_PREFIX)
        if not LEFT_OUT.fullmatch(key):
            renamed[HF_PREFIX + key] = tensor
    return renamed


def write_gemma_encoder(state: dict, hf_config: dict, source: dict, *, dtype: str | None,
                        quantize: int | None = None, group_size: int = 64,
                        settings: dict | None = None, where: str = "text_encoder/config.json"):
    """The text_encoder/ component for write_pipeline, (config.json dict, weights), from the
    hub text encoder's tensors `state` (all its shards) and its config.json; load_text_encoder
    reads it back."""
    config = GemmaConfig.from_hf(hf_config, where)
    return write_text_encoder(gemma_state(state), config, source, dtype=dtype,
                              quantize=quantize, group_size=group_size, settings=settings,
                              model_type=MODEL_TYPE)


def write_gemma_folder(folder: Path, source: dict, **options):
    """write_gemma_encoder of a hub text_encoder/ `folder` (config.json and one
    model.safetensors, or the shards its index names): every file is checked before a tensor
    is read, so a missing shard fails with nothing written."""
    folder = Path(folder)
    files = component_weights(folder, WEIGHTS_STEM, what="the Gemma-2 text encoder")
    if files is None:
        raise ValueError(f"{folder} holds neither {WEIGHTS_STEM}.safetensors nor its sharded "
                         "index; download the text encoder's weights into it")
    state = {}
    for path in files:
        state.update(read_checkpoint(path).state)
    path = folder / "config.json"
    return write_gemma_encoder(state, read_json(path, "download it again"), source,
                               where=str(path), **options)
