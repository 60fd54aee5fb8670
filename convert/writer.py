"""Write a pipeline folder atomically: every component into a temporary sibling, then one rename."""

import hashlib
import json
import os
import shutil
from pathlib import Path

from .shards import MAX_SHARD_BYTES, save_weights

INDEX_FILE = "model_index.json"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_pipeline(out: Path, index: dict, components: dict[str, tuple[dict, dict]],
                   force: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """components: name -> (config dict, {key: mx.array} or a callable that writes the weight
    files into the component folder before its config is written). Nothing is left
    half-written."""
    out = Path(out)
    if out.exists() and not force:
        raise ValueError(f"{out} already exists; pass --force to replace it or choose another --out")
    if not out.parent.exists():
        raise ValueError(f"cannot write {out}: folder {out.parent} does not exist; create it first")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, (config, weights) in components.items():
            (tmp / name).mkdir()
            metadata = {"format": "mlx", "mlx_imgen_component": name,
                        "family": str(index.get("family", ""))}
            if callable(weights):  # writes its own files (an autoencoder linked from the store)
                weights(tmp / name)
            else:
                save_weights(tmp / name, weights, metadata, max_shard_bytes)
            (tmp / name / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out
