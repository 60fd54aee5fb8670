"""Convert an alias or a local upstream checkpoint into an mlx-imgen pipeline folder."""

import dataclasses
import datetime
import json
from pathlib import Path

from mlx_imgen import families
from mlx_imgen.pipeline import INDEX_FILE
from mlx_imgen.quantize import check_settings
from mlx_imgen.registry import (AUTOENCODER_SOURCES, CARDS, DEFAULT_AUTOENCODERS, ModelCard, Source,
                                card_for_file, get_card)
from mlx_imgen.version import __version__
from mlx_imgen.weights.dtypes import default_dtype, resolve_dtype
from mlx_imgen.weights.jsonfile import read_json
from mlx_imgen.weights.readers import CHECKPOINT_SUFFIXES, read_checkpoint
from mlx_imgen.weights.shards import load_weights

from . import autoencoder_store as store
from . import amused, clip, janus, sana, upstream_config
from .hub import fetch, require
from .streaming import stream_weights
from .writer import holding_lock_on, sha256_of, write_pipeline


def parse_config_json(text: str | None) -> dict:
    if not text:
        return {}
    try:
        # JSON text first: a long object is no valid path (is_file raises ENAMETOOLONG)
        values = json.loads(text if text.lstrip().startswith("{") else Path(text).read_text())
    except (json.JSONDecodeError, OSError) as err:
        raise ValueError(f"--config is neither a JSON object nor a JSON file ({err}); "
                         "for example --config '{\"heads\": 16, \"image_size\": 256}'") from None
    if not isinstance(values, dict):
        raise ValueError("--config must be a JSON object, for example '{\"heads\": 16}'")
    return values


def _named_autoencoder(name: str | None) -> Source | None:
    """The hub VAE `name` stands for (sd-vae-ft-mse, ...), unless a local file or folder of
    that name exists: a path the user can see wins over a name."""
    if name in AUTOENCODER_SOURCES and not Path(name).exists():
        return AUTOENCODER_SOURCES[name]
    return None


def _alias_autoencoder(card: ModelCard, autoencoder: str | None) -> Source | None:
    """The hub autoencoder an alias converts with (None for a local --autoencoder file)."""
    return card.autoencoder if autoencoder is None else _named_autoencoder(autoencoder)


def _download_steps(sources: list[Source]) -> str:
    """'a.pt and b.pt from URL, and c.json and d.safetensors from URL into a folder ./d'."""
    from huggingface_hub import constants

    single: dict[str, list[str]] = {}  # repo -> files that convert one by one
    steps = []
    for source in sources:
        if source.repo is None:
            steps.append(f"{source.filename} (from the link in its upstream README)")
        elif source.config is None:
            single.setdefault(source.repo, []).append(source.filename)
        else:  # a diffusers component converts as a folder, laid out as in the repo
            steps.append(f"{source.config} and {source.filename} from {constants.ENDPOINT}/"
                         f"{source.repo} into a folder {_local_path(source)} (keeping their "
                         "paths)")
    steps[:0] = [f"{' and '.join(names)} from {constants.ENDPOINT}/{repo}"
                 for repo, names in single.items()]
    return ", and ".join(steps)


def _local_path(source: Source) -> str:
    # a folder named after the whole repo: `--autoencoder ./sd-vae-ft-mse` would name the hub
    # VAE (the CLI's path drops the ./)
    return f"./{source.repo.replace('/', '-')}" if source.config else f"./{source.filename}"


def _local_hint(card: ModelCard | None, autoencoder: str | None = None,
                out: Path | None = None, dtype: str | None = None) -> str:
    """What to download by hand, and the exact convert command for those local files."""
    if card is None:
        return ("download the checkpoint yourself and run `mlx-imgen convert path/to/CHECKPOINT "
                "--family FAMILY --out DIR`")
    ae = _alias_autoencoder(card, autoencoder)
    command = [f"mlx-imgen convert {_local_path(card.transformer)} --family {card.family}",
               f"--autoencoder {_local_path(ae) if ae else autoencoder}",
               f"--out {out or card.alias}"]
    if dtype and dtype != default_dtype():
        command.append(f"--dtype {dtype}")
    steps = _download_steps([card.transformer] + ([ae] if ae else []))
    return f"download {steps}, then run `{' '.join(command)}`"


def _source_record(path: Path, source: Source | None, sha256: str | None = None) -> dict:
    return {"repo": source.repo if source else None, "file": path.name,
            "revision": source.revision if source else None,
            "sha256": sha256 or sha256_of(path)}


def _check_family(family, state: dict, path: Path) -> None:
    if not family.is_checkpoint(state):
        found = ", ".join(sorted(state)[:4])
        raise ValueError(f"{path.name} is not a {family.name} checkpoint: expected keys "
                         f"{', '.join(family.signature)}, found keys like {found}")


def _check_whole_repo(source: str, *, name: str, title: str, parts: str, family, config,
                      autoencoder, weights) -> None:
    """A model that converts from its repo's own files alone (Janus-Pro, aMUSEd): --family may
    only name it, and --config, --autoencoder and --weights do not apply."""
    card = CARDS.get(source)
    if card is not None and card.family != name:
        raise ValueError(f"{source} is a {card.family} model, not {name}; leave out --family")
    if family not in (None, name):
        raise ValueError(f"{source} is {title} model, not {family}; leave out --family")
    extra = [flag for flag, value in (("--config", config), ("--autoencoder", autoencoder),
                                      ("--weights", weights)) if value]
    if extra:
        raise ValueError(f"{source} is {title} model, which converts from its repo's own "
                         f"{parts}; leave out {', '.join(extra)}")


def _convert_janus(source: str, out: Path, *, family, dtype, config, autoencoder, weights,
                   quantize, group_size, revision, force) -> Path:
    """Janus-Pro: the tokenizer and the VQ come from the same checkpoint, and config.json says
    what shapes cannot."""
    _check_whole_repo(source, name=janus.FAMILY, title="a Janus-Pro",
                      parts="files (its VQ tokenizer included)", family=family, config=config,
                      autoencoder=autoencoder, weights=weights)
    return janus.convert_janus(source, out, dtype=dtype, quantize=quantize,
                               group_size=group_size, revision=revision, force=force)


def _convert_amused(source: str, out: Path, *, family, dtype, config, autoencoder, weights,
                    quantize, group_size, revision, force, variant) -> Path:
    """aMUSEd: the VQ-GAN, the text encoder and the tokenizer come with the U-ViT, and each
    component's config.json says what shapes cannot."""
    _check_whole_repo(source, name=amused.FAMILY, title="an aMUSEd",
                      parts="folders (its VQ-GAN and text encoder included)", family=family,
                      config=config, autoencoder=autoencoder, weights=weights)
    return amused.convert_amused(source, out, dtype=dtype, quantize=quantize,
                                 group_size=group_size, revision=revision, force=force,
                                 variant=variant)


def requantize(folder: Path, out: Path, quantize: int, group_size: int, force: bool) -> Path:
    """Quantize a converted float pipeline folder into a new folder."""
    index = read_json(folder / INDEX_FILE)
    if index.get("quantization"):
        q = index["quantization"]
        raise ValueError(f"{folder} is already quantized ({q['bits']}-bit); quantize from the "
                         "float folder or the original checkpoint instead")
    t_config = read_json(folder / "transformer" / "config.json")
    fam = families.get(index.get("family") or t_config.get("family"))
    backbone = fam.config_class.from_dict(t_config["backbone"])
    weights, record = stream_weights(backbone, load_weights(folder / "transformer"), None,
                                     quantize, group_size, f"{folder / 'transformer'}",
                                     model_class=fam.model_class)
    ae_config = read_json(folder / "autoencoder" / "config.json")
    ae_folder = store.StoredAutoencoder(folder / "autoencoder", ae_config)
    index = {**index, "quantization": record}
    components = {
        "transformer": ({**t_config, "quantization": record}, weights),
        "autoencoder": (ae_config, store.linker(ae_folder, ae_config)),
    }
    if (folder / "text_encoder").is_dir():  # a text tower of its own is quantized alike
        components["text_encoder"] = _requantized_encoder(folder / "text_encoder", quantize,
                                                          group_size)
    if (folder / "tokenizer").is_dir():  # a text model's tokenizer files travel unchanged
        components["tokenizer"] = (None, clip.copied(
            {p.name: p for p in sorted((folder / "tokenizer").iterdir()) if p.is_file()}))
    return write_pipeline(out, index, components, force=force)


def _requantized_encoder(folder: Path, quantize: int, group_size: int) -> tuple[dict, dict]:
    from mlx_imgen.text.stored import build_encoder, config_from_dict

    stored = read_json(folder / "config.json")
    model_type = stored.get("model_type")
    model = build_encoder(model_type, config_from_dict(model_type, stored["config"]))
    weights, record = clip.encoder_weights(model, load_weights(folder), None, quantize,
                                           group_size, str(folder))
    return {**stored, "quantization": record}, weights


DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _diffusers_component(folder: Path) -> Path | None:
    """The weights file of a diffusers component folder (config.json beside the weights)."""
    if not (folder / "config.json").is_file():
        return None
    return next((folder / n for n in DIFFUSERS_WEIGHTS if (folder / n).is_file()), None)


def _fetch_source(source: Source, hint: str) -> Path:
    """A Source's weights file from the hub, or its fallback file where the repo lacks it."""
    try:
        return fetch(source.repo, source.filename, source.revision, local_hint=hint)
    except ValueError as err:
        if source.fallback is None:
            raise
        first = err
    try:
        return fetch(source.repo, source.fallback, source.revision, local_hint=hint)
    except ValueError:
        raise first from None


def _component_config(source: Source | None, weights: Path, hint: str) -> dict | None:
    """The config.json that comes with a component: from the hub beside a Source's weights, or
    beside a local diffusers weights file; None where the format has none."""
    if source is not None:
        if source.config is None:
            return None
        path = fetch(source.repo, source.config, source.revision, local_hint=hint)
        return read_json(path, "download it again")
    beside = weights.parent / "config.json"
    if weights.name in DIFFUSERS_WEIGHTS and beside.is_file():
        return read_json(beside, "download it again")
    return None


def _is_vae_folder(path: Path) -> bool:
    """A diffusers AutoencoderKL folder (config.json naming the class beside its weights)."""
    if _diffusers_component(path) is None:
        return False
    try:
        return read_json(path / "config.json").get("_class_name") == "AutoencoderKL"
    except ValueError:
        return False


def _standalone_autoencoder(source: str, path: Path) -> tuple[str, Source | None, Path | None] | None:
    """(kind, hub source, local path) when `source` names an autoencoder on its own: a VAE
    alias, a diffusers VAE folder, or a tokenizer file known by name."""
    if _named_autoencoder(source) is not None:
        return "kl", AUTOENCODER_SOURCES[source], None
    if path.is_dir() and _is_vae_folder(path):
        return "kl", None, path
    if path.is_file() and path.name in VQ_FILES:
        return "vq", None, path
    return None


def _convert_sana(source: str, out: Path, *, family, dtype, config, autoencoder, weights,
                  quantize, group_size, revision, force, variant, text_quantize) -> Path:
    """Sana: the DC-AE, the Gemma text encoder, the tokenizer and the scheduler come with the
    transformer, and each component's config.json says what shapes cannot."""
    _check_whole_repo(source, name=sana.FAMILY, title="a Sana",
                      parts="folders (its DC-AE and Gemma text encoder included)", family=family,
                      config=config, autoencoder=autoencoder, weights=weights)
    return sana.convert_sana(source, out, dtype=dtype, quantize=quantize, group_size=group_size,
                             revision=revision, force=force, variant=variant,
                             text_quantize=text_quantize)


@holding_lock_on("out")
def convert(source: str, out: str | Path, *, family: str | None = None, dtype: str | None = None,
            config: str | dict | None = None, autoencoder: str | None = None,
            revision: str | None = None, force: bool = False, quantize: int | None = None,
            group_size: int = 64, weights: str | None = None,
            variant: str | None = None, text_quantize: int | None = None) -> Path:
    """Convert `source` (an alias, a .pt/.pth/.safetensors path, or a converted float folder)
    into the folder `out`, optionally quantizing the transformer to `quantize` bits. A CLIP
    model (the scorer alias, a hub repo id or a hub-layout folder) converts into a scorer
    folder (convert/clip.py). `weights`
    picks the weight set of a training checkpoint ("ema" or "model"); by default the set the
    family's upstream samples from. An autoencoder alone converts into an autoencoder folder.
    `variant` "fp16" reads a diffusers repo's fp16 weights first (aMUSEd, Sana);
    `text_quantize` quantizes Sana's Gemma text encoder to other bits than the transformer."""
    dtype = resolve_dtype(dtype)
    out = Path(out)
    if out.exists() and not force:
        raise ValueError(f"{out} already exists; pass --force to replace it or choose another --out")
    if quantize:
        check_settings(quantize, group_size)
    path = Path(source)
    is_amused = amused.is_amused_source(source) or family == amused.FAMILY
    is_sana = sana.is_sana_source(source) or family == sana.FAMILY
    if variant is not None and not (is_amused or is_sana):
        raise ValueError(f"--variant picks the weights of a diffusers pipeline repo (aMUSEd, "
                         f"Sana); leave it out for {source}")
    if text_quantize is not None and not is_sana:
        raise ValueError(f"--text-quantize sets the bits of Sana's Gemma text encoder; leave it "
                         f"out for {source}")
    if text_quantize:
        check_settings(text_quantize, group_size)
    if clip.is_clip_source(source) or clip.is_converted_clip(path):
        extra = [name for name, value in (("--family", family), ("--config", config),
                                          ("--autoencoder", autoencoder), ("--weights", weights))
                 if value]
        if extra:
            raise ValueError(f"{source} is a CLIP model, which converts alone; leave out "
                             f"{', '.join(extra)}")
        if clip.is_clip_source(source):
            return clip.convert_clip(source, out, dtype=dtype, quantize=quantize,
                                     group_size=group_size, revision=revision, force=force)
        if not quantize:
            raise ValueError(f"{path} is a converted CLIP folder; to quantize it pass --quantize")
        return clip.requantize_clip(path, out, quantize, group_size, force)
    if is_sana:
        return _convert_sana(source, out, family=family, dtype=dtype, config=config,
                             autoencoder=autoencoder, weights=weights, quantize=quantize,
                             group_size=group_size, revision=revision, force=force,
                             variant=variant, text_quantize=text_quantize)
    if is_amused:
        return _convert_amused(source, out, family=family, dtype=dtype, config=config,
                               autoencoder=autoencoder, weights=weights, quantize=quantize,
                               group_size=group_size, revision=revision, force=force,
                               variant=variant)
    if janus.is_janus_source(source) or family == janus.FAMILY:
        return _convert_janus(source, out, family=family, dtype=dtype, config=config,
                              autoencoder=autoencoder, weights=weights, quantize=quantize,
                              group_size=group_size, revision=revision, force=force)
    standalone = _standalone_autoencoder(source, path)
    # a diffusers pipeline folder (transformer/ and vae/) or one component folder of it
    diffusers_weights = (_diffusers_component(path / "transformer") or _diffusers_component(path)) \
        if path.is_dir() else None
    if weights is not None and (standalone or path.is_dir() and diffusers_weights is None):
        raise ValueError("--weights picks the weight set of a training checkpoint; leave it out "
                         f"for {source}, which holds none")
    if standalone is not None:
        extra = [name for name, value in (("--family", family), ("--config", config),
                                          ("--autoencoder", autoencoder), ("--quantize", quantize))
                 if value]
        if extra:
            raise ValueError(f"{source} is an autoencoder, which converts alone; leave out "
                             f"{', '.join(extra)}")
        return convert_autoencoder(*standalone, out, revision=revision, force=force)
    if path.is_dir() and diffusers_weights is None:
        if not quantize:
            raise ValueError(f"{path} is a folder; to quantize a converted folder pass --quantize, "
                             "otherwise pass a checkpoint file")
        return requantize(path, out, quantize, group_size, force)
    card: ModelCard | None
    local_vae = None
    if diffusers_weights is not None:
        card, transformer_path, transformer_source = None, diffusers_weights, None
        local_vae = _diffusers_component(path / "vae")
    elif path.is_file():
        card = card_for_file(path.name)
        transformer_path, transformer_source = path, None
    elif source in CARDS:
        card = get_card(source)
        hint = _local_hint(card, autoencoder, out, dtype)
        if card.transformer.repo is None:
            raise ValueError(f"{source} is not on the hub; {hint}")
        transformer_source = dataclasses.replace(
            card.transformer, revision=revision or card.transformer.revision)
        require([transformer_source, _alias_autoencoder(card, autoencoder)], hint)
        transformer_path = _fetch_source(transformer_source, hint)
    elif path.suffix in CHECKPOINT_SUFFIXES or "/" in source:
        raise ValueError(f"{source} does not exist; pass the path of a downloaded checkpoint")
    else:
        get_card(source)  # raises with the closest aliases
        raise AssertionError("unreachable")

    checkpoint = read_checkpoint(transformer_path, weights)
    family_name = family or (card.family if card else None) or families.detect(checkpoint.state)
    if family_name is None:
        if _looks_like_vq(checkpoint.state) and weights is None:
            return convert_autoencoder("vq", None, transformer_path, out, force=force)
        raise ValueError(f"{transformer_path.name} matches no known family; pass --family "
                         f"(one of {', '.join(families.FAMILIES)})")
    if family_name == janus.FAMILY:  # a Janus weights file named on its own
        return _convert_janus(source, out, family=family, dtype=dtype, config=config,
                              autoencoder=autoencoder, weights=weights, quantize=quantize,
                              group_size=group_size, revision=revision, force=force)
    fam = families.get(family_name)
    if weights is None:
        checkpoint.select(None, fam.samples_from)
    state = checkpoint.state
    _check_family(fam, state, transformer_path)
    asked = upstream_config.merge(
        upstream_config.normalise(family_name, checkpoint.args, "the checkpoint's stored args",
                                  strict=False),
        upstream_config.normalise(family_name, config if isinstance(config, dict)
                                  else parse_config_json(config), "--config"))
    hints = {**(card.hints if card and card.family == family_name else {}), **asked}
    config_json = _component_config(transformer_source, transformer_path, _local_hint(card))
    if config_json is not None:
        hints["config_json"] = config_json
    try:
        backbone = fam.infer_config(state, hints)
    except KeyError as err:  # a key the family's layout always has
        raise ValueError(f"{transformer_path.name} lacks {err.args[0]}, which every "
                         f"{family_name} checkpoint has; pass a complete checkpoint") from None
    upstream_config.check(family_name, backbone, asked)
    sources = fam.weights_from_upstream(state, lazy=True)
    del state  # the lazy map holds what it needs, and lets go of each tensor once loaded
    transformer_weights, quantization = stream_weights(
        backbone, sources, dtype, quantize, group_size, f"{transformer_path.name} (as {family_name})")

    settings = {"dtype": dtype, "quantization": quantization, "mlx_imgen_version": __version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    stored_ae = _pipeline_autoencoder(fam.autoencoder, card, family_name, autoencoder, local_vae,
                                      settings)
    ae_config = {**stored_ae.config, **settings, "dtype": store.DTYPE, "quantization": None}
    index = {"family": family_name, "paradigm": fam.paradigm,
             "alias": card.alias if card and card.family == family_name else None,
             "license": card.license if card else fam.license,
             "sampling": dict(card.sampling if card and card.family == family_name
                              else fam.sampling),
             "weights": checkpoint.weight_set, **settings}
    t_source = {**_source_record(transformer_path, transformer_source),
                "weights": checkpoint.weight_set, "entry": checkpoint.entry}
    components = {
        "transformer": ({"family": family_name, "backbone": backbone.to_dict(),
                         "source": t_source, **settings}, transformer_weights),
        "autoencoder": (ae_config, store.linker(stored_ae, ae_config)),
    }
    return write_pipeline(out, index, components, force=force)


VQ_FILES = {s.filename for s in DEFAULT_AUTOENCODERS.values() if s.config is None} | {"vq_ds8_c2i.pt"}
VQ_KEYS = ("quantize.embedding.weight", "encoder.conv_in.weight", "decoder.conv_out.weight")


def _looks_like_vq(state: dict) -> bool:
    return all(k in state for k in VQ_KEYS)


def _ae_hint(ae_source: Source | None) -> str:
    if ae_source and ae_source.config:
        return f"download the hub repo {ae_source.repo} and pass its folder as --autoencoder"
    return f"download {ae_source.filename if ae_source else 'it'} and pass --autoencoder PATH"


def _pipeline_autoencoder(kind: str, card: ModelCard | None, family_name: str,
                          autoencoder: str | None, local_vae: Path | None,
                          settings: dict) -> store.StoredAutoencoder:
    """The family's autoencoder from the store (converted there on first use), or a converted
    autoencoder folder passed as --autoencoder."""
    ae_source = card.autoencoder if card else DEFAULT_AUTOENCODERS[family_name]
    ae_path = None
    if _named_autoencoder(autoencoder) is not None:
        ae_source = AUTOENCODER_SOURCES[autoencoder]
    elif autoencoder or local_vae:
        ae_path, ae_source = Path(autoencoder) if autoencoder else local_vae, None
        if store.is_autoencoder_folder(ae_path):
            return store.read_folder(ae_path, kind)
        if ae_path.is_dir():
            folder, ae_path = ae_path, _diffusers_component(ae_path)
            if ae_path is None:
                raise ValueError(f"{folder} is not a diffusers VAE folder (config.json and "
                                 f"{DIFFUSERS_WEIGHTS[0]}) nor a converted autoencoder folder; "
                                 "pass one of those or a checkpoint file")
    if ae_source is not None:
        ae_path = _fetch_source(ae_source, _ae_hint(ae_source))
    return _stored_autoencoder(kind, ae_source, ae_path, settings)


def _stored_autoencoder(kind: str, ae_source: Source | None, ae_path: Path,
                        settings: dict) -> store.StoredAutoencoder:
    if not ae_path.is_file():
        raise ValueError(f"{ae_path} does not exist; pass the path of a downloaded "
                         f"{'VAE' if kind == 'kl' else 'tokenizer'}")
    sha = sha256_of(ae_path)
    record = {**_source_record(ae_path, ae_source, sha)}
    config_json = _component_config(ae_source, ae_path, _ae_hint(ae_source))
    return store.stored(kind, ae_path, sha, record, config_json, settings)


def convert_autoencoder(kind: str, ae_source: Source | None, ae_path: Path | None, out: Path, *,
                        revision: str | None = None, force: bool = False) -> Path:
    """An autoencoder on its own: a VAE alias, a diffusers VAE folder or a tokenizer file, into
    an autoencoder folder that `convert --autoencoder` accepts."""
    if ae_source is not None:
        ae_source = dataclasses.replace(ae_source, revision=revision or ae_source.revision)
        ae_path = _fetch_source(ae_source, _ae_hint(ae_source))
    elif ae_path.is_dir():
        ae_path = _diffusers_component(ae_path)
    settings = {"mlx_imgen_version": __version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return store.write_folder(out, _stored_autoencoder(kind, ae_source, ae_path, settings), force)
