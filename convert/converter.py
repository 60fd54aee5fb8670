"""Convert an alias or a local upstream checkpoint into an mlx-imgen pipeline folder."""

import datetime
import json
from pathlib import Path

import mlx.core as mx

from mlx_imgen import __version__, families
from mlx_imgen.autoencoders import AUTOENCODERS
from mlx_imgen.backbone import Transformer
from mlx_imgen.registry import CARDS, DEFAULT_AUTOENCODERS, ModelCard, Source, card_for_file, get_card

from .hub import fetch
from .keymap import check_weights
from .readers import CHECKPOINT_SUFFIXES, read_state_dict
from .writer import sha256_of, write_pipeline

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def default_dtype() -> str:
    """float16 where a GPU runs the model, float32 on the CPU (which has no fast half matmul)."""
    return "float16" if mx.default_device().type == mx.gpu else "float32"


def resolve_dtype(dtype: str | None) -> str:
    dtype = dtype or default_dtype()
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return dtype


def parse_config_json(text: str | None) -> dict:
    if not text:
        return {}
    try:
        values = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    except (json.JSONDecodeError, OSError) as err:
        raise ValueError(f"--config is neither a JSON object nor a JSON file ({err}); "
                         "for example --config '{\"heads\": 16, \"image_size\": 256}'") from None
    if not isinstance(values, dict):
        raise ValueError("--config must be a JSON object, for example '{\"heads\": 16}'")
    return values


def _local_hint(card: ModelCard | None) -> str:
    name = card.transformer.filename if card else "CHECKPOINT.pt"
    family = card.family if card else "FAMILY"
    return (f"download {name} yourself and run `mlx-imgen convert path/to/{name} "
            f"--family {family} --out DIR`")


def _source_record(path: Path, source: Source | None) -> dict:
    return {"repo": source.repo if source else None, "file": path.name,
            "revision": source.revision if source else None, "sha256": sha256_of(path)}


def _check_family(family, state: dict, path: Path) -> None:
    if not family.is_checkpoint(state):
        found = ", ".join(sorted(state)[:4])
        raise ValueError(f"{path.name} is not a {family.FAMILY} checkpoint: expected keys "
                         f"{', '.join(family.SIGNATURE)}, found keys like {found}")


def convert(source: str, out: str | Path, *, family: str | None = None, dtype: str | None = None,
            config: str | dict | None = None, autoencoder: str | None = None,
            revision: str | None = None, force: bool = False) -> Path:
    """Convert `source` (an alias, or a .pt/.pth/.safetensors path) into the folder `out`."""
    dtype = resolve_dtype(dtype)
    out = Path(out)
    if out.exists() and not force:
        raise ValueError(f"{out} already exists; pass --force to replace it or choose another --out")
    path = Path(source)
    card: ModelCard | None
    if path.is_file():
        card = card_for_file(path.name)
        transformer_path, transformer_source = path, None
    elif source in CARDS:
        card = get_card(source)
        transformer_source = Source(card.transformer.repo, card.transformer.filename,
                                    revision or card.transformer.revision)
        transformer_path = fetch(transformer_source.repo, transformer_source.filename,
                                 transformer_source.revision, local_hint=_local_hint(card))
    elif path.suffix in CHECKPOINT_SUFFIXES or "/" in source:
        raise ValueError(f"{source} does not exist; pass the path of a downloaded checkpoint")
    else:
        get_card(source)  # raises with the closest aliases
        raise AssertionError("unreachable")

    state = read_state_dict(transformer_path)
    family_name = family or (card.family if card else None) or families.detect(state)
    if family_name is None:
        raise ValueError(f"{transformer_path.name} matches no known family; pass --family "
                         f"(one of {', '.join(families.FAMILIES)})")
    fam = families.get(family_name)
    _check_family(fam, state, transformer_path)
    hints = {**(card.hints if card and card.family == family_name else {}),
             **(config if isinstance(config, dict) else parse_config_json(config))}
    backbone = fam.infer_config(state, hints)
    weights = {k: v.astype(DTYPES[dtype]) for k, v in fam.weights_from_upstream(state).items()}
    check_weights(Transformer(backbone), weights, f"{transformer_path.name} (as {family_name})")

    ae_source = card.autoencoder if card else DEFAULT_AUTOENCODERS[family_name]
    if autoencoder:
        ae_path, ae_source = Path(autoencoder), None
    else:
        ae_path = fetch(ae_source.repo, ae_source.filename, ae_source.revision,
                        local_hint=f"download {ae_source.filename} and pass --autoencoder PATH")
    kind = AUTOENCODERS[fam.AUTOENCODER]
    ae_state = read_state_dict(ae_path)
    ae_config = kind.infer_config(ae_state)
    ae_weights = kind.weights_from_upstream(ae_state)
    check_weights(kind.model(ae_config), ae_weights, f"{ae_path.name} (as {fam.AUTOENCODER})")

    settings = {"dtype": dtype, "quantization": None, "mlx_imgen_version": __version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    index = {"family": family_name, "paradigm": fam.PARADIGM,
             "alias": card.alias if card and card.family == family_name else None,
             "license": card.license if card else None,
             "sampling": dict(card.sampling if card else fam.SAMPLING), **settings}
    components = {
        "transformer": ({"family": family_name, "backbone": backbone.to_dict(),
                         "source": _source_record(transformer_path, transformer_source), **settings},
                        weights),
        "autoencoder": ({"kind": fam.AUTOENCODER, "config": ae_config.to_dict(),
                         "source": _source_record(ae_path, ae_source), **settings,
                         "dtype": "float32"},
                        ae_weights),
    }
    return write_pipeline(out, index, components, force=force)
