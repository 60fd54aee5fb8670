"""Write a pipeline folder atomically: every component into a temporary sibling, then one
rename, holding the lock on the folder (mlx_imgen.io) throughout."""

import functools
import hashlib
import inspect
import json
import os
from pathlib import Path

from mlx_imgen.io import atomic_folder, exclusive_target
from mlx_imgen.pipeline import INDEX_FILE
from mlx_imgen.weights.shards import MAX_SHARD_BYTES, save_weights


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_pipeline(out: Path, index: dict, components: dict[str, tuple[dict, dict]],
                   force: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """components: name -> (config dict, {key: mx.array} or a callable that writes the weight
    files into the component folder before its config is written); a config of None writes no
    config.json (a tokenizer/ folder holds only its own files). Nothing is left half-written."""
    out = Path(out)
    with atomic_folder(out, replace=force) as tmp:
        for name, (config, weights) in components.items():
            (tmp / name).mkdir()
            metadata = {"format": "mlx", "mlx_imgen_component": name,
                        "family": str(index.get("family", ""))}
            if callable(weights):  # writes its own files (an autoencoder linked from the store)
                weights(tmp / name)
            else:
                save_weights(tmp / name, weights, metadata, max_shard_bytes)
            if config is not None:
                (tmp / name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return out


def holding_lock_on(param: str):
    """Run the decorated function holding exclusive_target() on its argument `param`, so a
    second process converting into the same folder is refused before any work starts."""
    def decorate(func):
        signature = inspect.signature(func)

        @functools.wraps(func)
        def locked(*args, **kwargs):
            with exclusive_target(signature.bind(*args, **kwargs).arguments[param]):
                return func(*args, **kwargs)
        return locked
    return decorate
