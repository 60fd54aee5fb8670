"""Convert a CLIP model (a hub repo such as openai/clip-vit-large-patch14, the scorer alias, or
the repo's files in a local folder) into a folder with text_encoder/, image_encoder/,
tokenizer/ and image_processor/: what `mlx-imgen score` loads.

`write_text_encoder` is the text-encoder writer every text-to-image folder reuses (aMUSEd's
CLIPTextModelWithProjection is a text_encoder/ of the same kind)."""

import dataclasses
import datetime
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_imgen.quantize import apply_structure, check_settings, quantization_record, quantize_weight
from mlx_imgen.registry import SCORERS, Source, scorer_for
from mlx_imgen.text.clip import configs_from_hf
from mlx_imgen.text.clip_keys import clip_weights_from_hf
from mlx_imgen.text.stored import build_encoder, config_dict, quantizable_layers
from mlx_imgen.version import __version__
from mlx_imgen.weights.dtypes import cast, resolve_dtype
from mlx_imgen.weights.jsonfile import read_json
from mlx_imgen.weights.keymap import KeyMismatchError, as_mlx, check_shapes, check_weights, shape_of
from mlx_imgen.weights.readers import CHECKPOINT_SUFFIXES, read_checkpoint

from .hub import HUB_ID, MissingHubFile, download_hint, fetch, fetch_optional, require
from .writer import sha256_of, write_pipeline

KIND = "clip"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
PROCESSOR_FILE = "preprocessor_config.json"
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass
class CLIPFiles:
    """Where a CLIP repo's files are: in the hub cache or a local folder."""
    repo: str | None
    revision: str | None
    config: Path
    weights: Path
    processor: Path
    tokenizer: dict[str, Path]


def _hf_config(path: Path) -> dict | None:
    try:
        return read_json(path / "config.json")
    except ValueError:
        return None


def is_clip_folder(path: Path) -> bool:
    """A folder laid out as a CLIP hub repo (config.json of model_type clip)."""
    config = _hf_config(path) if path.is_dir() else None
    return config is not None and config.get("model_type") == "clip"


def is_clip_source(source: str) -> bool:
    """Whether `convert` should take `source` as a CLIP model: the scorer alias, a CLIP hub
    repo folder, or a hub repo id (owner/name, not a local path) that names CLIP. Other repo
    ids keep the image models' answer (a path that does not exist): a DiT or VAE repo is
    converted through its alias, and must not be fetched as if it were CLIP."""
    path = Path(source)
    if path.exists():
        return is_clip_folder(path)
    return (scorer_for(source) is not None
            or bool(HUB_ID.fullmatch(source)) and "clip" in source.lower()
            and path.suffix not in CHECKPOINT_SUFFIXES)


def _hint(repo: str, out: Path | None) -> str:
    hint = download_hint(repo, f"config.json, {WEIGHTS_FILES[0]}, {PROCESSOR_FILE} and the "
                         f"tokenizer files the repo has ({', '.join(TOKENIZER_FILES)})", out)
    if scorer_for(repo) is None:  # a hub id nobody vouched for may be a mistyped local path
        hint += f"; or, if {repo} is meant as a local path, it does not exist"
    return hint


def hub_files(repo: str, revision: str | None, out: Path | None = None) -> CLIPFiles:
    """The files of a CLIP hub repo, fetched into the hub cache (failing at once offline)."""
    hint = _hint(repo, out)
    weights = Source(repo, WEIGHTS_FILES[0], revision, config="config.json",
                     fallback=WEIGHTS_FILES[1])
    require([weights], hint)
    config = fetch(repo, "config.json", revision, local_hint=hint)
    if read_json(config, "download it again").get("model_type") != "clip":
        raise _not_clip(repo, read_json(config))
    try:
        weights_path = fetch(repo, WEIGHTS_FILES[0], revision, local_hint=hint)
    except MissingHubFile:
        weights_path = fetch(repo, WEIGHTS_FILES[1], revision, local_hint=hint)
    processor = fetch(repo, PROCESSOR_FILE, revision, local_hint=hint)
    tokenizer = {name: p for name in TOKENIZER_FILES
                 if (p := fetch_optional(repo, name, revision, hint)) is not None}
    return CLIPFiles(repo, revision, config, weights_path, processor, tokenizer)


def _not_clip(where: str, config: dict) -> ValueError:
    return ValueError(f"{where} is not a CLIP model (its config.json has model_type "
                      f"{config.get('model_type')!r}); `mlx-imgen convert` takes CLIP repos by hub "
                      "id or folder, and image models by alias or checkpoint file")


def local_files(folder: Path) -> CLIPFiles:
    """The files of a CLIP repo downloaded into `folder` (the hub's layout)."""
    config = read_json(folder / "config.json", "download it again")
    if config.get("model_type") != "clip":
        raise _not_clip(str(folder), config)
    weights = next((folder / n for n in WEIGHTS_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise ValueError(f"{folder} has neither {' nor '.join(WEIGHTS_FILES)}; download the "
                         "weights of the CLIP repo into it")
    if not (folder / PROCESSOR_FILE).is_file():
        raise ValueError(f"{folder} has no {PROCESSOR_FILE}; download it from the CLIP repo "
                         "into the folder")
    tokenizer = {name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()}
    return CLIPFiles(None, None, folder / "config.json", weights, folder / PROCESSOR_FILE,
                     tokenizer)


def _check_tokenizer(files: CLIPFiles, where: str) -> None:
    names = files.tokenizer
    if "tokenizer.json" not in names and not {"vocab.json", "merges.txt"} <= set(names):
        raise ValueError(f"{where} has no tokenizer: it needs tokenizer.json, or vocab.json and "
                         "merges.txt; download them from the CLIP repo")


def encoder_weights(model, state: dict, dtype: str | None, quantize: int | None,
                    group_size: int, what: str) -> tuple[dict, dict | None]:
    """(weights, quantization record) of an encoder from its mlx-imgen-keyed `state`: each
    tensor cast to `dtype` and, in the layers quantize would quantize, quantized as it goes, so
    the float and quantized copies of the whole encoder never coexist."""
    check_shapes(model, {k: shape_of(v) for k, v in state.items()}, what)
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    record, layers = None, set()
    if quantize:
        record = quantization_record(quantize, group_size, quantizable_layers(model, group_size))
        layers = {f"{path}.weight" for path in record["modules"]}
    weights = {}
    for key in list(state):
        array = cast(as_mlx(state.pop(key)), dtype)
        if tuple(array.shape) != tuple(expected[key]):
            raise KeyMismatchError(f"The {what} does not fit the model: {key} loads as "
                                   f"{tuple(array.shape)}, not {tuple(expected[key])}")
        if key in layers:
            new = {key[: -len("weight")] + n: v
                   for n, v in quantize_weight(array, quantize, group_size).items()}
        else:
            new = {key: array}
        mx.eval(new)
        weights.update(new)
    if record:
        apply_structure(model, record)
        check_weights(model, weights, what)
    return weights, record


def _write_encoder(model_type: str, state: dict, config, source: dict, *, dtype: str | None,
                   quantize: int | None, group_size: int, settings: dict) -> tuple[dict, dict]:
    model = build_encoder(model_type, config)
    what = f"{source.get('file')} ({model_type.replace('_', ' ')} weights)"
    weights, record = encoder_weights(model, state, dtype, quantize, group_size, what)
    return ({"model_type": model_type, "config": config_dict(config), "source": source,
             **settings, "dtype": dtype, "quantization": record}, weights)


def write_text_encoder(state: dict, config, source: dict, *, dtype: str | None,
                       quantize: int | None = None, group_size: int = 64,
                       settings: dict | None = None, model_type: str = "clip_text"):
    """The text_encoder/ component for write_pipeline: (config.json dict, weights). `state`
    is in mlx-imgen keys (clip_weights_from_hf's "text"); load_text_encoder reads it back."""
    return _write_encoder(model_type, state, config, source, dtype=dtype, quantize=quantize,
                          group_size=group_size, settings=settings or {})


def write_image_encoder(state: dict, config, source: dict, *, dtype: str | None,
                        quantize: int | None = None, group_size: int = 64,
                        settings: dict | None = None):
    """The image_encoder/ component for write_pipeline (see write_text_encoder)."""
    return _write_encoder("clip_vision", state, config, source, dtype=dtype, quantize=quantize,
                          group_size=group_size, settings=settings or {})


def copied(files: dict[str, Path]):
    """A component writer that copies files (tokenizer, image processor) into its folder."""
    def write(folder: Path) -> None:
        for name, path in files.items():
            shutil.copyfile(path, folder / name)
    return write


def convert_clip(source: str, out: Path, *, dtype: str | None = None,
                 quantize: int | None = None, group_size: int = 64,
                 revision: str | None = None, force: bool = False) -> Path:
    """A CLIP alias, hub repo id or local repo folder into a scorer folder at `out` (the
    caller holds the lock on `out`)."""
    dtype = resolve_dtype(dtype)
    if quantize:
        check_settings(quantize, group_size)
    card = scorer_for(source)
    path = Path(source)
    if path.is_dir():
        files, where = local_files(path), str(path)
    else:
        repo = card.repo if card else source
        files, where = hub_files(repo, revision, out), f"the hub repo {repo}"
    _check_tokenizer(files, where)
    hf_config = read_json(files.config, "download it again")
    text_config, vision_config = configs_from_hf(hf_config)
    if text_config is None or vision_config is None:
        raise ValueError(f"{where} holds one CLIP tower, not both; a scorer needs a CLIPModel "
                         "(text and image towers)")
    checkpoint = read_checkpoint(files.weights)
    # lazy: each tensor is read when it is cast, and let go of once written into the result
    parts = clip_weights_from_hf(checkpoint.state, lazy=True)
    del checkpoint
    source_record = {"repo": files.repo, "file": files.weights.name, "revision": files.revision,
                     "sha256": sha256_of(files.weights)}
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    settings = {"mlx_imgen_version": __version__, "created": created}
    common = dict(dtype=dtype, quantize=quantize, group_size=group_size, settings=settings)
    text = write_text_encoder(parts["text"], text_config, source_record, **common)
    image = write_image_encoder(parts["vision"], vision_config, source_record, **common)
    if card is None and files.repo is not None:
        card = next((c for c in SCORERS.values() if c.repo == files.repo), None)
    index = {"kind": KIND, "alias": card.alias if card else None,
             "license": card.license if card else None, "repo": files.repo, "dtype": dtype,
             "quantization": {"text_encoder": text[0]["quantization"],
                              "image_encoder": image[0]["quantization"]},
             **settings}
    return write_pipeline(out, index, {
        "text_encoder": text,
        "image_encoder": image,
        "tokenizer": (None, copied(files.tokenizer)),
        "image_processor": (None, copied({PROCESSOR_FILE: files.processor})),
    }, force=force)


def is_converted_clip(path: Path) -> bool:
    from mlx_imgen.pipeline import INDEX_FILE

    try:
        return path.is_dir() and read_json(path / INDEX_FILE).get("kind") == KIND
    except ValueError:
        return False


def requantize_clip(folder: Path, out: Path, quantize: int, group_size: int,
                    force: bool = False) -> Path:
    """Quantize both encoders of a converted float CLIP folder into a new folder."""
    from mlx_imgen.pipeline import INDEX_FILE
    from mlx_imgen.text.stored import config_from_dict
    from mlx_imgen.weights.shards import load_weights

    check_settings(quantize, group_size)
    index = read_json(folder / INDEX_FILE)
    if any((index.get("quantization") or {}).values()):
        raise ValueError(f"{folder} is already quantized; quantize from the float folder or the "
                         "hub repo instead")
    components, records = {}, {}
    for name in ("text_encoder", "image_encoder"):
        stored = read_json(folder / name / "config.json")
        model_type = stored.get("model_type")
        model = build_encoder(model_type, config_from_dict(model_type, stored["config"]))
        weights, records[name] = encoder_weights(model, load_weights(folder / name), None,
                                                 quantize, group_size, str(folder / name))
        components[name] = ({**stored, "quantization": records[name]}, weights)
    for name in ("tokenizer", "image_processor"):
        components[name] = (None, copied({p.name: p for p in sorted((folder / name).iterdir())
                                          if p.is_file()}))
    return write_pipeline(out, {**index, "quantization": records}, components, force=force)
