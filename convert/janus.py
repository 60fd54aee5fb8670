"""Convert Janus-Pro (an alias, a hub repo id, or a folder of the repo's files) into a pipeline
folder: transformer/ (the language model with gen_embed, gen_aligner and gen_head),
autoencoder/ (the VQ-16 decoder out of the same checkpoint), tokenizer/ (the repo's own files).

Both layouts on the hub convert: deepseek-ai's own (`pytorch_model.bin`, or shards with
`pytorch_model.bin.index.json`, read through the restricted unpickler; bfloat16 storages are
read as such and cast one tensor at a time) and the transformers port (`model.safetensors`, or
shards with `model.safetensors.index.json`). Only the generation path is converted: the SigLIP
understanding encoder, its aligner and the text `lm_head` are left out, and the folder records
which tensors were."""

import dataclasses
import datetime
import hashlib
import re
from pathlib import Path

from mlx_imgen import families
from mlx_imgen.autoencoders.janus_vq import vq_state
from mlx_imgen.families.janus import LEFT_OUT, VQ_PREFIXES
from mlx_imgen.quantize import check_settings
from mlx_imgen.registry import CARDS, ModelCard, Source
from mlx_imgen.version import __version__
from mlx_imgen.weights.dtypes import resolve_dtype
from mlx_imgen.weights.jsonfile import read_json
from mlx_imgen.weights.readers import read_checkpoint

from . import autoencoder_store as store
from .clip import copied
from .diffusers_repo import shard_names
from .hub import HUB_ID, download_hint, fetch, fetch_optional, is_family_source, require
from .streaming import stream_weights
from .writer import sha256_of, write_pipeline

FAMILY = "janus"
# config.json's model_type in each layout: deepseek-ai's MultiModalityCausalLM, transformers'
MODEL_TYPES = {"multi_modality": "original", "janus": "transformers"}
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

@dataclasses.dataclass
class JanusFiles:
    """Where a Janus repo's files are (hub cache or a local folder)."""
    repo: str | None
    revision: str | None
    where: str                      # how messages name it: "the hub repo X" or the folder
    weights: list[Path]             # one file, or the shards an index lists
    index: Path | None
    config: Path | None
    tokenizer: dict[str, Path]


def _model_type(folder: Path) -> str | None:
    try:
        return read_json(folder / "config.json").get("model_type")
    except ValueError:
        return None


def is_janus_folder(path: Path) -> bool:
    """A folder of a Janus repo's files, or a weights file or index inside one."""
    folder = path if path.is_dir() else path.parent
    return (path.is_dir() or path.name in WEIGHTS_FILES + INDEX_FILES) and \
        (folder / "config.json").is_file() and _model_type(folder) in MODEL_TYPES


def is_janus_source(source: str) -> bool:
    """An alias of the janus family, a Janus repo folder, or a hub repo id naming Janus."""
    return is_family_source(source, FAMILY, is_janus_folder)


def _hint(repo: str, out: Path | None) -> str:
    files = (f"config.json, the weights ({' or '.join(WEIGHTS_FILES)}, or the shards and their "
             f"index) and {', '.join(TOKENIZER_FILES)}")
    return download_hint(repo, files, out)


def hub_files(repo: str, revision: str | None, out: Path | None,
              first: str | None = None) -> JanusFiles:
    """A Janus repo's files fetched into the hub cache (failing at once offline when they are
    not cached). `first` is the weights file the alias's card names, tried before the others."""
    hint = _hint(repo, out)
    require([Source(repo, "config.json", revision)], hint)
    where = f"the hub repo {repo}"
    config = fetch(repo, "config.json", revision, local_hint=hint)
    names = ([first] if first else []) + [n for n in INDEX_FILES + WEIGHTS_FILES if n != first]
    found = next(((n, p) for n in names if (p := fetch_optional(repo, n, revision, hint))), None)
    if found is None:
        raise ValueError(f"{where} holds none of {', '.join(names)} (or they are not cached and "
                         f"the hub cannot be reached); {hint}")
    name, path = found
    if name in INDEX_FILES:
        index = path
        weights = [fetch(repo, shard, revision, local_hint=hint)
                   for shard in shard_names(index, where)]
    else:
        index, weights = None, [path]
    tokenizer = {n: p for n in TOKENIZER_FILES if (p := fetch_optional(repo, n, revision, hint))}
    return JanusFiles(repo, revision, where, weights, index, config, tokenizer)


def local_files(path: Path) -> JanusFiles:
    """A folder of a Janus repo's files, or one weights file or index named inside one."""
    folder = path if path.is_dir() else path.parent
    where = str(folder)
    if path.is_file():
        chosen = path
    else:
        chosen = next((folder / n for n in INDEX_FILES + WEIGHTS_FILES
                       if (folder / n).is_file()), None)
        if chosen is None:
            raise ValueError(f"{folder} holds none of {', '.join(INDEX_FILES + WEIGHTS_FILES)}; "
                             "download the Janus repo's weights into it")
    index, weights = None, [chosen]
    if chosen.name.endswith(".index.json"):
        index = chosen
        weights = [folder / n for n in shard_names(index, where)]
        missing = [w.name for w in weights if not w.is_file()]
        if missing:
            raise ValueError(f"{folder} lacks the shard {missing[0]} that {index.name} lists; "
                             "download it into the folder")
    config = folder / "config.json" if (folder / "config.json").is_file() else None
    tokenizer = {n: folder / n for n in TOKENIZER_FILES if (folder / n).is_file()}
    return JanusFiles(None, None, where, weights, index, config, tokenizer)


def read_state(files: JanusFiles) -> dict:
    """The whole checkpoint as one flat {key: lazy tensor}, over every shard."""
    state = {}
    for path in files.weights:
        state.update(read_checkpoint(path).state)
    return state


def left_out(state: dict, layout: str) -> list[dict]:
    """What the conversion leaves out of `state` (the family's LEFT_OUT groups): a record of
    each group's tensors and parameters for the folder."""
    record = []
    for part, patterns in LEFT_OUT[layout].items():
        keys = [k for k in state if any(re.fullmatch(p, k) for p in patterns)]
        if keys:
            record.append({"part": part, "tensors": len(keys),
                           "parameters": sum(_numel(state[k]) for k in keys)})
    return record


def _numel(value) -> int:
    n = 1
    for size in value.shape:
        n *= int(size)
    return n


def _not_janus(files: JanusFiles, state: dict, fam) -> ValueError:
    names = ", ".join(f.name for f in files.weights[:2])
    found = ", ".join(sorted(state)[:3]) or "none"
    return ValueError(f"{names} is not a Janus-Pro checkpoint in either layout: expected keys "
                      f"{', '.join(fam.signature)}, found keys like {found}; pass the "
                      "deepseek-ai/Janus-Pro repo's files (or the transformers port's), or "
                      "another --family")


def _file_records(files: JanusFiles) -> list[dict]:
    return [{"file": p.name, "sha256": sha256_of(p)}
            for p in ([files.index] if files.index else []) + files.weights]


def _vq_store_key(records: list[dict], layout: str) -> str:
    """A digest naming the tokenizer inside these files (not the files themselves, whose own
    sha256 would name a standalone tokenizer checkpoint in the store)."""
    text = "janus-vq:" + layout + ":" + ",".join(r["sha256"] for r in records)
    return hashlib.sha256(text.encode()).hexdigest()


def convert_janus(source: str, out: Path, *, dtype: str | None = None,
                  quantize: int | None = None, group_size: int = 64,
                  revision: str | None = None, force: bool = False) -> Path:
    """`source` (a janus alias, a hub repo id, a local repo folder or a weights file in one)
    into the pipeline folder `out` (the caller holds the lock on `out`)."""
    dtype = resolve_dtype(dtype)
    if quantize:
        check_settings(quantize, group_size)
    fam = families.get(FAMILY)
    card: ModelCard | None = CARDS.get(source)
    path = Path(source)
    if card is not None:
        files = hub_files(card.transformer.repo, revision or card.transformer.revision, out,
                          first=card.transformer.filename)
    elif path.exists():
        files = local_files(path)
    elif HUB_ID.fullmatch(source):
        files = hub_files(source, revision, out)
    else:
        raise ValueError(f"{source} does not exist; pass a janus alias, a hub repo id or the "
                         "folder of a downloaded Janus repo")
    if card is None and files.repo is not None:
        card = next((c for c in CARDS.values() if c.family == FAMILY
                     and c.transformer.repo == files.repo), None)

    state = read_state(files)
    layout = fam.layout(state)
    if layout is None:
        raise _not_janus(files, state, fam)
    if "tokenizer.json" not in files.tokenizer:
        raise ValueError(f"{files.where} has no tokenizer.json; download it (and "
                         f"{', '.join(TOKENIZER_FILES[1:])}) from the Janus repo into the folder")
    hints = dict(card.hints) if card else {}
    if files.config is not None:
        hints["config_json"] = read_json(files.config, "download it again")
    try:
        backbone = fam.infer_config(state, hints)
    except KeyError as err:  # a key the layout always has
        raise ValueError(f"{files.where} lacks {err.args[0]}, which every Janus-Pro checkpoint "
                         "has; download every shard of the repo") from None
    skipped = left_out(state, layout.name)
    records = _file_records(files)
    vq = vq_state(state, VQ_PREFIXES[layout.name])
    sources = fam.weights_from_upstream(state, lazy=True)
    what = f"{files.weights[0].name} (as janus, {layout.name} layout)"
    transformer_weights, quantization = stream_weights(backbone, sources, dtype, quantize,
                                                       group_size, what)
    del state, sources

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    settings = {"dtype": dtype, "quantization": quantization, "mlx_imgen_version": __version__,
                "created": created}
    source_record = {"repo": files.repo, "revision": files.revision,
                     "file": (files.index or files.weights[0]).name,
                     "sha256": records[0]["sha256"], "files": records, "layout": layout.name}
    stored_ae = store.stored("vq", files.weights[0], _vq_store_key(records, layout.name),
                             {**source_record, "component": VQ_PREFIXES[layout.name]}, None,
                             settings, state=vq)
    ae_config = {**stored_ae.config, **settings, "dtype": store.DTYPE, "quantization": None}
    index = {"family": FAMILY, "paradigm": fam.paradigm, "condition": fam.condition,
             "alias": card.alias if card else None,
             "license": card.license if card else fam.license,
             "sampling": dict(card.sampling if card else fam.sampling),
             "weights": "raw", "left_out": skipped, **settings}
    components = {
        "transformer": ({"family": FAMILY, "backbone": backbone.to_dict(), "source": source_record,
                         "left_out": skipped, **settings}, transformer_weights),
        "autoencoder": (ae_config, store.linker(stored_ae, ae_config)),
        "tokenizer": (None, copied(files.tokenizer)),
    }
    return write_pipeline(out, index, components, force=force)
