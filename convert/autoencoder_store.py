"""Autoencoders converted once: a standalone autoencoder folder, and a content-addressed store
from which pipeline folders hard-link their autoencoder weights.

The store lives under the mlx-imgen cache (MLX_IMGEN_CACHE, else $XDG_CACHE_HOME/mlx-imgen,
else ~/.cache/mlx-imgen), one folder per (source sha256, dtype, format version). A pipeline's
autoencoder/ hard-links the stored weights, so each folder stays self-contained and movable
and two pipelines share the bytes; across filesystems the weights are copied, and the
component's config.json says which. Entries are written to a temporary folder and renamed
into place: two processes converting the same autoencoder both succeed, one entry survives.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlx_imgen.autoencoders import AUTOENCODERS

from mlx_imgen.weights.jsonfile import read_json
from mlx_imgen.weights.keymap import as_mlx, check_shapes, shape_of
from mlx_imgen.weights.readers import read_state_dict
from mlx_imgen.weights.shards import save_weights, weight_files

FORMAT_VERSION = 1
DTYPE = "float32"  # autoencoders stay in float32: they are small and decode to pixels
AUTOENCODER_INDEX = "autoencoder_index.json"  # marks a standalone autoencoder folder


def cache_root() -> Path:
    if os.environ.get("MLX_IMGEN_CACHE"):
        return Path(os.environ["MLX_IMGEN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlx-imgen"


def store_root() -> Path:
    return cache_root() / "autoencoders"


@dataclass
class StoredAutoencoder:
    """A converted autoencoder: `folder` holds its weights, `config` its config.json."""
    folder: Path
    config: dict
    reused: bool = False


def store_key(sha256: str, config_json: dict | None) -> str:
    """The weights' sha256, and that of the config.json a VAE converts with (its scaling
    factor is part of the converted autoencoder)."""
    parts = [sha256]
    if config_json is not None:
        text = json.dumps(config_json, sort_keys=True).encode()
        parts.append(hashlib.sha256(text).hexdigest()[:16])
    return "-".join([*parts, DTYPE, f"v{FORMAT_VERSION}"])


def convert_state(kind: str, path: Path, config_json: dict | None,
                  state: dict | None = None) -> tuple[dict, dict]:
    """(config dict, weights) of an upstream autoencoder checkpoint, checked against the model;
    `state` is its state dict where the caller has it already (a tokenizer inside a larger
    checkpoint, such as Janus's)."""
    ae = AUTOENCODERS[kind]
    state = read_state_dict(path) if state is None else state
    config = ae.infer_config(state) if config_json is None else \
        ae.infer_config(state, config=config_json)
    deferred = ae.weights_from_upstream(state, lazy=True)
    # keys and shapes first: a wrong file fails before any tensor is read
    check_shapes(ae.model(config), {k: shape_of(v) for k, v in deferred.items()},
                 f"{path.name} (as {kind})")
    return config.to_dict(), {k: as_mlx(v) for k, v in deferred.items()}


def stored(kind: str, path: Path, sha256: str, source_record: dict,
           config_json: dict | None, settings: dict, state: dict | None = None) -> StoredAutoencoder:
    """The store's entry for this autoencoder file, converted and added on first use (from
    `state` where given: its key must then name those tensors, not the whole file)."""
    folder = store_root() / store_key(sha256, config_json)
    if (folder / "config.json").is_file():
        config = read_json(folder / "config.json", f"delete {folder} and convert again")
        if config.get("kind") != kind:
            raise ValueError(f"{path.name} is stored as a {config.get('kind')} autoencoder, "
                             f"not {kind}; pass the family's own tokenizer or VAE")
        # the same bytes may come from another repo or path: record this conversion's
        return StoredAutoencoder(folder, {**config, "source": source_record}, reused=True)
    ae_config, weights = convert_state(kind, path, config_json, state)
    config = {"kind": kind, "config": ae_config, "source": source_record, **settings,
              "dtype": DTYPE, "quantization": None}
    store_root().mkdir(parents=True, exist_ok=True)
    _remove_stale_partials()
    tmp = Path(tempfile.mkdtemp(prefix=f".partial-{os.getpid()}-", dir=store_root()))
    try:
        save_weights(tmp, weights, {"format": "mlx", "mlx_imgen_component": "autoencoder"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process stored it first: keep theirs
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return StoredAutoencoder(folder, config)


def _remove_stale_partials() -> None:
    """Temporary entries of killed conversions (their process is gone)."""
    for tmp in store_root().glob(".partial-*"):
        pid = tmp.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def link_into(stored_folder: Path, target: Path) -> str:
    """Hard-link the stored weight files into `target`, copying where a link cannot be made
    (another filesystem); "hard link" or "copy", for the folder's record."""
    how = "hard link"
    for path in weight_files(stored_folder) + sorted(stored_folder.glob("*.index.json")):
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)
            how = "copy"
    return how


def linker(stored_ae: StoredAutoencoder, config: dict):
    """A weights writer for write_pipeline: it links the stored files into the component folder
    and records in `config` (written after the weights) how they got there."""
    def write(folder: Path) -> None:
        key = config.get("store", {}).get("key", stored_ae.folder.name)
        config["store"] = {"key": key, "files": link_into(stored_ae.folder, folder)}
    return write


def is_autoencoder_folder(path: Path) -> bool:
    return path.is_dir() and (path / AUTOENCODER_INDEX).is_file()


def read_folder(path: Path, kind: str) -> StoredAutoencoder:
    """A standalone autoencoder folder written by `mlx-imgen convert`, for --autoencoder."""
    config = read_json(path / "config.json", "convert the autoencoder again")
    if config.get("kind") != kind:
        raise ValueError(f"{path} holds a {config.get('kind')} autoencoder but this family "
                         f"decodes with a {kind} one; pass a {kind} autoencoder")
    if not weight_files(path):
        raise ValueError(f"{path} has no weights; convert the autoencoder again")
    return StoredAutoencoder(path, config, reused=True)


def write_folder(out: Path, stored_ae: StoredAutoencoder, force: bool) -> Path:
    """A standalone autoencoder folder: config.json, the weights linked from the store, and
    the index that marks it; written to a temporary sibling and renamed into place."""
    out = Path(out)
    if out.exists() and not force:
        raise ValueError(f"{out} already exists; pass --force to replace it or choose another --out")
    if not out.parent.is_dir():
        raise ValueError(f"cannot write {out}: folder {out.parent} does not exist; create it first")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        config = dict(stored_ae.config)
        config["store"] = {"key": stored_ae.folder.name,
                           "files": link_into(stored_ae.folder, tmp)}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / AUTOENCODER_INDEX).write_text(json.dumps(
            {"component": "autoencoder", "kind": config["kind"],
             "format_version": FORMAT_VERSION}, indent=2) + "\n")
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.rename(old, out)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return out
