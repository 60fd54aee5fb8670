"""The files of a diffusers pipeline repo (aMUSEd's, Sana's), from the hub cache or a local folder
in the hub layout: model_index.json, one folder per component with its config.json and weights
(one file, or shards named by an index file), the tokenizer's files and the scheduler's config.

Each component's weights are looked for in float32 first (safetensors, a sharded safetensors
index, then `.bin`), the `.fp16` variant last, or first when the variant is asked for."""

import dataclasses
from pathlib import Path

import mlx.core as mx

from mlx_imgen.registry import CARDS, Source
from mlx_imgen.weights.dtypes import cast
from mlx_imgen.weights.jsonfile import read_json
from mlx_imgen.weights.keymap import as_mlx
from mlx_imgen.weights.readers import read_checkpoint

from . import autoencoder_store as store
from .clip import copied
from .hub import HUB_ID, download_hint, fetch, fetch_optional, require
from .streaming import stream_weights
from .writer import sha256_of, write_pipeline

VARIANTS = (None, "fp16")
TOKENIZER = "tokenizer"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
INDEX_SUFFIX = ".index.json"


@dataclasses.dataclass(frozen=True)
class RepoLayout:
    """What a family's pipeline repo holds."""
    title: str                       # how messages name the model ("aMUSEd")
    pipeline_class: str              # model_index.json's _class_name
    components: dict                 # folder -> (weights file stem, what it is in words)
    tokenizer_files: tuple[str, ...]  # the tokenizer folder's files, copied where present
    tokenizer_needs: tuple[str, ...]  # of which these must be present
    repos: str                       # the published repos, as a message names them
    aliases: str                     # the family's aliases, as a message names them
    model: str                       # what the transformer is, in words ("an aMUSEd U-ViT")

    def hint(self, repo: str, out: Path | None) -> str:
        folders = ", ".join(f"{c}/" for c in (*self.components, TOKENIZER, "scheduler"))
        return download_hint(repo, f"the repo's model_index.json and its {folders} folders "
                             "(keeping their paths)", out)


@dataclasses.dataclass
class RepoFiles:
    """Where a pipeline repo's files are."""
    layout: RepoLayout
    repo: str | None
    revision: str | None
    where: str                       # how messages name it: "the hub repo X" or the folder
    configs: dict[str, Path]         # component -> its config.json
    weights: dict[str, list[Path]]   # component -> its weights file, or its shards
    tokenizer: dict[str, Path]
    scheduler: Path | None

    def state(self, component: str) -> dict:
        """The component's tensors, lazily, from its file or all its shards."""
        state = {}
        for path in self.weights[component]:
            state.update(read_checkpoint(path).state)
        return state

    def file_name(self, component: str) -> str:
        """The component's weights as a message names them: its file, or its first shard."""
        paths = self.weights[component]
        return f"{component}/{paths[0].name}" + (f" (1 of {len(paths)} shards)"
                                                 if len(paths) > 1 else "")

    def source(self, component: str) -> dict:
        """Where the component came from, with each file's sha256."""
        paths = self.weights[component]
        record = {"repo": self.repo, "revision": self.revision,
                  "file": f"{component}/{paths[0].name}", "sha256": sha256_of(paths[0])}
        if len(paths) > 1:
            record["shards"] = [{"file": f"{component}/{p.name}", "sha256": sha256_of(p)}
                                for p in paths]
        return record

    def check_tokenizer(self) -> None:
        missing = [n for n in self.layout.tokenizer_needs if n not in self.tokenizer]
        if missing:
            raise ValueError(f"{self.where} has no {TOKENIZER}/{missing[0]}; download the "
                             f"{TOKENIZER}/ folder ({', '.join(self.layout.tokenizer_needs)}) "
                             "into it")


def weights_names(stem: str, variant: str | None = None) -> list[str]:
    """A component's weights file names in the order they are tried."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown weights variant {variant!r}; pass fp16 or leave it out")
    full = [f"{stem}.safetensors", f"{stem}.safetensors{INDEX_SUFFIX}", f"{stem}.bin"]
    half = [f"{stem}.fp16.safetensors", f"{stem}.safetensors.index.fp16.json"]
    return half + full if variant == "fp16" else full + half


def shard_names(index: Path, where: str) -> list[str]:
    """The shard files a sharded checkpoint's index names (its weight_map's values), each a
    plain file name beside the index, each once."""
    weight_map = read_json(index, "download it again").get("weight_map")
    names = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
    if not names or not all(isinstance(n, str) and n and n == Path(n).name for n in names):
        raise ValueError(f"{index.name} in {where} is damaged (no weight_map of shard file "
                         "names beside it); download it again")
    return names


def _is_index(name: str) -> bool:
    return name.endswith(".json")


def pipeline_class(folder: Path) -> str | None:
    try:
        return read_json(folder / "model_index.json").get("_class_name")
    except ValueError:
        return None


def hub_files(layout: RepoLayout, repo: str, revision: str | None, out: Path | None,
              variant: str | None = None) -> RepoFiles:
    """A pipeline repo's files fetched into the hub cache (failing at once offline when they
    are not cached)."""
    hint = layout.hint(repo, out)
    first = next(iter(layout.components))
    require([Source(repo, f"{first}/config.json", revision)], hint)
    configs, weights = {}, {}
    for component, (stem, _) in layout.components.items():
        configs[component] = fetch(repo, f"{component}/config.json", revision, local_hint=hint)
        names = weights_names(stem, variant)
        found = next((p for n in names
                      if (p := fetch_optional(repo, f"{component}/{n}", revision, hint))), None)
        if found is None:
            raise ValueError(f"the hub repo {repo} holds none of {component}/{names[0]} or its "
                             f"variants (or they are not cached and the hub cannot be reached); "
                             f"{hint}")
        weights[component] = [found]
        if _is_index(found.name):
            weights[component] = [fetch(repo, f"{component}/{n}", revision, local_hint=hint)
                                  for n in shard_names(found, f"the hub repo {repo}")]
    tokenizer = {n: p for n in layout.tokenizer_files
                 if (p := fetch_optional(repo, f"{TOKENIZER}/{n}", revision, hint))}
    scheduler = fetch_optional(repo, SCHEDULER_CONFIG, revision, hint)
    return RepoFiles(layout, repo, revision, f"the hub repo {repo}", configs, weights,
                     tokenizer, scheduler)


def _missing_component(layout: RepoLayout, folder: Path, component: str,
                       what: str) -> ValueError:
    return ValueError(f"{folder} has no {component}/ folder ({what}); download the {component}/ "
                      f"folder of {layout.repos} (the one this folder came from) into it")


def component_weights(folder: Path, stem: str, variant: str | None = None,
                      what: str = "the weights") -> list[Path] | None:
    """A component folder's weights: its one file, or the shards its index names (each
    present: a missing one is refused, naming it); None where it holds no weights file."""
    chosen = next((folder / n for n in weights_names(stem, variant) if (folder / n).is_file()),
                  None)
    if chosen is None or not _is_index(chosen.name):
        return None if chosen is None else [chosen]
    shards = [folder / n for n in shard_names(chosen, str(folder))]
    missing = next((p for p in shards if not p.is_file()), None)
    if missing is not None:
        raise ValueError(f"{folder} lacks {missing.name}, a shard of {what} that {chosen.name} "
                         f"names; download it into {folder}")
    return shards


def local_files(layout: RepoLayout, folder: Path, variant: str | None = None) -> RepoFiles:
    """A folder of a pipeline repo's files in the hub layout; a component or a shard it lacks
    is refused, naming what to download, before anything is read."""
    configs, weights = {}, {}
    for component, (stem, what) in layout.components.items():
        found = component_weights(folder / component, stem, variant, what)
        if not (folder / component / "config.json").is_file() or found is None:
            raise _missing_component(layout, folder, component,
                                     f"{what}: config.json and {weights_names(stem, variant)[0]}")
        configs[component], weights[component] = folder / component / "config.json", found
    tokenizer = {n: folder / TOKENIZER / n for n in layout.tokenizer_files
                 if (folder / TOKENIZER / n).is_file()}
    if not tokenizer:
        raise _missing_component(layout, folder, TOKENIZER,
                                 f"the tokenizer's {', '.join(layout.tokenizer_needs)}")
    scheduler = folder / SCHEDULER_CONFIG
    return RepoFiles(layout, None, None, str(folder), configs, weights, tokenizer,
                     scheduler if scheduler.is_file() else None)


def is_pipeline_folder(path: Path, layout: RepoLayout) -> bool:
    """A folder of the layout's repo files (its model_index.json names the pipeline class)."""
    return path.is_dir() and pipeline_class(path) == layout.pipeline_class


def card_and_files(layout: RepoLayout, family: str, source: str, out: Path | None,
                   revision: str | None, variant: str | None):
    """(the model card, or None for an unknown repo or a folder; the repo's files) of `source`:
    an alias of `family`, a folder of the repo's files, or a hub repo id (a published repo's id
    finds its card)."""
    card = CARDS.get(source)
    files = repo_files(layout, source, card, out, revision, variant)
    if card is None and files.repo is not None:
        card = next((c for c in CARDS.values() if c.family == family
                     and c.transformer.repo == files.repo), None)
    return card, files


def stored_autoencoder(files: RepoFiles, component: str, kind: str,
                       settings: dict) -> store.StoredAutoencoder:
    """The component's autoencoder from the store (converted on first use), always float32: an
    fp16 variant is widened as it is read (aMUSEd's VQ-GAN overflows in float16), and a file
    holding inf or NaN is refused."""
    paths = files.weights[component]
    if len(paths) > 1:
        raise ValueError(f"{component}/ in {files.where} is sharded; the autoencoder is one "
                         f"file: download {component}/diffusion_pytorch_model.safetensors")
    config_json = read_json(files.configs[component], "download it again")
    state = {k: cast(as_mlx(v), "float32") for k, v in read_checkpoint(paths[0]).state.items()}
    overflowed = next((k for k, v in state.items() if not mx.all(mx.isfinite(v)).item()), None)
    if overflowed is not None:
        raise ValueError(f"{component}/{paths[0].name} in {files.where} holds non-finite weights "
                         f"({overflowed}: values past float16's range became inf), which decode "
                         f"to NaN; download the float32 {component}/"
                         f"{weights_names('diffusion_pytorch_model')[0]} instead")
    record = files.source(component)
    return store.stored(kind, paths[0], record["sha256"], record, config_json, settings,
                        state=state)


def repo_files(layout: RepoLayout, source: str, card, out: Path | None, revision: str | None,
               variant: str | None) -> RepoFiles:
    """The files of `source`: an alias (its card), a folder of the repo's files, or a hub repo
    id."""
    path = Path(source)
    if card is not None:
        return hub_files(layout, card.transformer.repo, revision or card.transformer.revision,
                         out, variant)
    if path.is_dir():
        return local_files(layout, path, variant)
    folders = ", ".join(f"{c}/" for c in (*layout.components, TOKENIZER))
    if path.exists():
        raise ValueError(f"{source} is a file; pass the folder of a downloaded {layout.title} "
                         f"repo (model_index.json, {folders})")
    if HUB_ID.fullmatch(source):
        return hub_files(layout, source, revision, out, variant)
    raise ValueError(f"{source} does not exist; pass {layout.aliases}, a hub repo id or the "
                     f"folder of a downloaded {layout.title} repo")


def stream_transformer(files: RepoFiles, family, dtype: str | None, quantize: int | None,
                       group_size: int, check=None):
    """(config, weights, quantization record) of the repo's transformer/, its config read from
    its config.json and checked against the weights, streamed one tensor at a time; `check`
    (config -> None) refuses a config before any tensor is read."""
    name = files.file_name("transformer")
    state = files.state("transformer")
    model = files.layout.model
    if family.layout(state) is None:
        found = ", ".join(sorted(state)[:3]) or "none"
        raise ValueError(f"{name} in {files.where} is not {model}: expected keys "
                         f"{', '.join(family.signature)}, found keys like {found}; pass the "
                         f"{files.layout.title} repo's transformer/ folder")
    hints = {"config_json": read_json(files.configs["transformer"], "download it again")}
    try:
        config = family.infer_config(state, hints)
    except KeyError as err:  # a key the layout always has
        raise ValueError(f"{name} in {files.where} lacks {err.args[0]}, which every "
                         f"{model.split(' ', 1)[1]} has; download it again") from None
    if check is not None:
        check(config)
    sources = family.weights_from_upstream(state, lazy=True)
    del state
    weights, record = stream_weights(config, sources, dtype, quantize, group_size,
                                     f"{name} (as {family.name})",
                                     model_class=family.model_class)
    return config, weights, record


def write_converted(out: Path, files: RepoFiles, family, card, *, sampling: dict, common: dict,
                    transformer: tuple, stored_ae: store.StoredAutoencoder, text: tuple,
                    dtype: str | None, force: bool) -> Path:
    """The pipeline folder of a converted repo: model_index.json (the card's alias and license,
    the sampling defaults), transformer/ from `transformer` (config, weights, quantization
    record), autoencoder/ linked from the store, text_encoder/ (`text`: config dict and
    weights) and the repo's tokenizer files."""
    config, weights, quantization = transformer
    settings = {**common, "dtype": dtype, "quantization": quantization}
    ae_config = {**stored_ae.config, **settings, "dtype": store.DTYPE, "quantization": None}
    index = {"family": family.name, "paradigm": family.paradigm, "condition": family.condition,
             "alias": card.alias if card else None,
             "license": card.license if card else family.license,
             "sampling": sampling, "weights": "raw", **settings}
    components = {
        "transformer": ({"family": family.name, "backbone": config.to_dict(),
                         "source": files.source("transformer"), **settings}, weights),
        "autoencoder": (ae_config, store.linker(stored_ae, ae_config)),
        "text_encoder": text,
        TOKENIZER: (None, copied(files.tokenizer)),
    }
    return write_pipeline(out, index, components, force=force)
