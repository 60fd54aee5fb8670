"""Safetensors weights of one component, split into shards with an index above a size limit."""

import json
from pathlib import Path

import mlx.core as mx
from safetensors import safe_open

from .jsonfile import read_json

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 * 1024 ** 3


def save_weights(folder: Path, weights: dict[str, mx.array], metadata: dict,
                 max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Write `model.safetensors`, or numbered shards and an index when larger than the limit."""
    total = sum(v.nbytes for v in weights.values())
    if total <= max_shard_bytes:
        mx.save_safetensors(str(folder / WEIGHTS_FILE), weights, metadata=metadata)
        return [WEIGHTS_FILE]
    shards, current, size = [], {}, 0
    for key in sorted(weights):
        if current and size + weights[key].nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = weights[key]
        size += weights[key].nbytes
    shards.append(current)
    names, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(folder / name), shard, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
        names.append(name)
    index = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return names


def load_weights(folder: Path) -> dict[str, mx.array]:
    """All weights of a component folder, from one file or from its shards."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        weights = {}
        for name in _shard_names(folder):
            weights.update(_load_checked(folder / name))
        return weights
    if not (folder / WEIGHTS_FILE).is_file():
        raise ValueError(f"{folder} has no {WEIGHTS_FILE}; convert the model again")
    return _load_checked(folder / WEIGHTS_FILE)


def _shard_names(folder: Path) -> list[str]:
    """Shard file names from the index, which must name plain files inside the folder."""
    index_path = folder / INDEX_FILE
    weight_map = read_json(index_path).get("weight_map")
    names = set(weight_map.values()) if isinstance(weight_map, dict) and weight_map else set()
    if not names or not all(isinstance(n, str) and n == Path(n).name and n.endswith(
            ".safetensors") for n in names):
        raise ValueError(f"{index_path} is damaged (no weight_map of shard file names); "
                         "convert the model again")
    missing = sorted(n for n in names if not (folder / n).is_file())
    if missing:
        raise ValueError(f"{folder} lacks the shard {missing[0]} its index lists; "
                         "convert the model again")
    return sorted(names)


def _load_checked(path: Path) -> dict[str, mx.array]:
    # safetensors validates the header (length, JSON, every offset inside the file) before
    # mx.load maps the data, so a truncated or damaged file is refused, not read past its end.
    try:
        with safe_open(str(path), framework="numpy") as handle:
            handle.keys()
        return mx.load(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors and mlx raise assorted errors
        raise ValueError(f"{path} is damaged ({type(err).__name__}); convert the model "
                         "again") from None


def weight_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    return sorted(folder.glob("model*.safetensors"))
