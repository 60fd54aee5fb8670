"""Safetensors weights of one component, split into shards with an index above a size limit."""

import json
from pathlib import Path

import mlx.core as mx

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
        index = json.loads((folder / INDEX_FILE).read_text())
        weights = {}
        for name in sorted(set(index["weight_map"].values())):
            weights.update(mx.load(str(folder / name)))
        return weights
    if not (folder / WEIGHTS_FILE).is_file():
        raise ValueError(f"{folder} has no {WEIGHTS_FILE}; convert the model again")
    return mx.load(str(folder / WEIGHTS_FILE))


def weight_files(folder: Path) -> list[Path]:
    folder = Path(folder)
    return sorted(folder.glob("model*.safetensors"))
