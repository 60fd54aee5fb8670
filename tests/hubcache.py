"""A local Hugging Face hub cache built by the tests, so hub code runs with HF_HUB_OFFLINE=1."""

import hashlib
import os
import shutil
from pathlib import Path


def add_to_hub_cache(hf_home: Path, repo: str, files: dict[str, Path], revision: str = "main") -> None:
    """Lay files out as huggingface_hub's cache does: blobs, a snapshot, and a ref to it."""
    root = Path(hf_home) / "hub" / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        target = snapshot / name  # a name may hold a folder: transformer/config.json
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        os.symlink(os.path.relpath(blob, target.parent), target)


def offline_env(hf_home: Path, cache: Path) -> dict:
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", MLX_IMGEN_CACHE=str(cache))
    env.pop("HF_HUB_CACHE", None)
    return env


def go_offline(monkeypatch, hub_cache: Path, cache: Path) -> Path:
    """In this process: huggingface_hub offline over `hub_cache` (its hub/ folder), and
    mlx-imgen's model cache at `cache`, which is returned."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("MLX_IMGEN_CACHE", str(cache))
    return cache


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
