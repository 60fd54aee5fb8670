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

MODEL_TYPE = "gemma2"
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"
# Gemma2Model's keys have no prefix; a Gemma2ForCausalLM's sit under "model." beside the
# LM head, which is the embedding's transpose (tied) and is not part of the encoder
HF_PREFIX = "model."
LEFT_OUT = re.compile(r"lm_head\..*")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a text_encoder/ folder: the shards its index lists (each
    present), or its one model.safetensors."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if not index.is_file():
        if (folder / WEIGHTS_FILE).is_file():
            return [folder / WEIGHTS_FILE]
        raise ValueError(f"{folder} holds neither {INDEX_FILE} nor {WEIGHTS_FILE}; download "
                         "the text encoder's weights into it")
    weight_map = read_json(index, "download it again").get("weight_map")
    names = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
    if not names or not all(isinstance(n, str) and n and n == Path(n).name for n in names):
        raise ValueError(f"{index} is damaged (no weight_map of shard file names); download it "
                         "again")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks the shard {missing[0]} that {INDEX_FILE} lists; "
                         "download it into the folder")
    return [folder / n for n in names]


def gemma_state(folder: Path) -> dict:
    """{mlx-lm key: lazy tensor} over every shard: transformers' keys under "model."."""
    state = {}
    for path in weight_files(folder):
        for key, tensor in read_checkpoint(path).state.items():
            key = key.removeprefix(HF_PREFIX)
            if not LEFT_OUT.fullmatch(key):
                state[HF_PREFIX + key] = tensor
    return state


def read_config(folder: Path) -> GemmaConfig:
    path = Path(folder) / "config.json"
    return GemmaConfig.from_hf(read_json(path, "download it again"), str(path))


def write_gemma_encoder(folder: Path, source: dict, *, dtype: str | None,
                        quantize: int | None = None, group_size: int = 64,
                        settings: dict | None = None):
    """The text_encoder/ component for write_pipeline, (config.json dict, weights), from the
    hub's text_encoder/ `folder`; load_text_encoder reads it back. Every file is checked before
    a tensor is read, so a missing shard fails with nothing written."""
    config = read_config(folder)
    state = gemma_state(folder)
    return write_text_encoder(state, config, source, dtype=dtype, quantize=quantize,
                              group_size=group_size, settings=settings, model_type=MODEL_TYPE)
