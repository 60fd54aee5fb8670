"""`mlx-imgen models`, `convert` and `info`: the model list, conversion, and folder details."""

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mlx_imgen.registry import CARDS, SCORERS

from .errors import loading, user_errors
from .validate import check_options, check_value, group_sizes, quantize_bits

console = Console()


def models():
    """List the known model aliases."""
    table = Table(title="mlx-imgen models (class-conditional: ImageNet classes)")
    table.add_column("alias", no_wrap=True)  # what the user types: never cut
    for column in ("paradigm", "params", "resolution", "FID", "license", "source"):
        table.add_column(column)
    for card in CARDS.values():
        if card.condition != "class":
            continue
        table.add_row(card.alias, card.paradigm, card.parameters,
                      f"{card.image_size}px", f"{card.fid}" if card.fid else "-", card.license,
                      _source(card))
    console.print(table)
    text_cards = [card for card in CARDS.values() if card.condition == "text"]
    texts = Table(title="text-to-image models (condition: text prompts; scores as published)")
    texts.add_column("alias", no_wrap=True)
    texts.add_column("paradigm")
    texts.add_column("params")
    texts.add_column("resolution")
    # one column of name-value pairs, which wraps, so the license still fits 80 columns
    texts.add_column("published scores", min_width=len("GenEval 0.64"))
    texts.add_column("license", min_width=len("non-commercial"))  # Sana's word, never cut
    texts.add_column("source")
    for card in text_cards:
        scores = ", ".join(f"{name} {value:.2f}" for name, value in card.benchmarks.items())
        texts.add_row(card.alias, card.paradigm, card.parameters, f"{card.image_size}px",
                      scores or "-", card.license, _source(card))
    console.print(texts)
    scorers = Table(title="scorers (mlx-imgen score; not image generators)")
    scorers.add_column("alias", no_wrap=True)
    for column in ("kind", "params", "resolution", "license", "source"):
        scorers.add_column(column)
    for card in SCORERS.values():
        scorers.add_row(card.alias, card.kind.upper(), card.parameters, f"{card.image_size}px",
                        card.license, card.repo)
    console.print(scorers)


def _source(card) -> str:
    return ((f"{card.transformer.repo}/{card.transformer.filename}" if card.transformer.repo
             else f"local file {card.transformer.filename}")
            + ("" if card.confirmed else " (unconfirmed)"))


def check_convert_options(dtype: str | None, config: str | None, quantize: int | None,
                          group_size: int) -> None:
    from mlx_imgen.convert.converter import parse_config_json
    from mlx_imgen.weights.dtypes import resolve_dtype

    resolve_dtype(dtype)
    check_options({"--quantize": (quantize, quantize_bits()),
                   "--group-size": (group_size, group_sizes())})
    parse_config_json(config)  # its values are checked against the family by the converter


def convert(
    source: str = typer.Argument(..., help="An alias, or a local .pt/.pth/.safetensors checkpoint; "
                                 "or a CLIP model: its hub repo id or a folder of its files."),
    out: Path = typer.Option(..., "--out", "--output", help="The pipeline folder to write."),
    family: str = typer.Option(None, help="Family of a local checkpoint (detected if omitted)."),
    dtype: str = typer.Option(None, help="float32, float16 or bfloat16 (default: float16 on a "
                              "GPU, float32 on the CPU)."),
    config: str = typer.Option(None, help="JSON (or a JSON file) for what shapes cannot tell, "
                               "e.g. '{\"heads\": 16, \"image_size\": 256}'."),
    autoencoder: Path = typer.Option(None, help="A local tokenizer/VAE checkpoint instead of "
                                     "the family's default from the hub."),
    revision: str = typer.Option(None, help="Pin the hub revision (a commit hash or tag)."),
    force: bool = typer.Option(False, help="Replace an existing output folder."),
    quantize: int = typer.Option(None, help="Quantize the transformer (a CLIP model's two "
                                 "encoders) to this many bits "
                                 "(8 or 4; also 2, 3, 5, 6). A converted float folder may be "
                                 "given as SOURCE."),
    group_size: int = typer.Option(64, help="Quantization group size (32, 64 or 128)."),
    weights: str = typer.Option(None, help="The weight set of a training checkpoint: ema or "
                                "model (default: the one upstream samples from, ema for DiT/SiT)."),
    variant: str = typer.Option(None, help="fp16: read a diffusers repo's .fp16 weights "
                                "first (aMUSEd, Sana; they are read anyway where the float32 "
                                "ones are absent)."),
    text_quantize: int = typer.Option(None, help="Sana: quantize the Gemma text encoder to "
                                      "this many bits (default: as --quantize), e.g. "
                                      "--quantize 8 --text-quantize 4."),
):
    """Convert a PyTorch checkpoint (or an autoencoder alone) into an MLX folder."""
    from mlx_imgen.convert.converter import convert as run_convert

    with user_errors():
        check_convert_options(dtype, config, quantize, group_size)
        check_options({"--text-quantize": (text_quantize, quantize_bits())})
        with console.status(f"converting {source}"):
            folder = run_convert(source, out, family=family, dtype=dtype, config=config,
                                 autoencoder=str(autoencoder) if autoencoder else None,
                                 revision=revision, force=force, quantize=quantize,
                                 group_size=group_size, weights=weights, variant=variant,
                                 text_quantize=text_quantize)
        console.print(f"wrote {folder}")


def info(folder: Path = typer.Argument(..., help="A converted pipeline folder."),
         check: bool = typer.Option(False, help="Measure the quantization error against this "
                                    "float model on a fixed input."),
         bits: str = typer.Option("8,4", help="Bit widths for --check."),
         group_size: int = typer.Option(64, help="Group size for --check.")):
    """Describe a converted pipeline folder."""
    from mlx_imgen.pipeline import INDEX_FILE
    from mlx_imgen.weights.jsonfile import read_json
    from mlx_imgen.weights.shards import weight_files

    from .errors import parse_positive_ints

    with user_errors(), loading(str(folder)):
        if not check and (bits != "8,4" or group_size != 64):
            raise ValueError("--bits and --group-size apply only with --check; add --check or "
                             "drop them")
        check_value("--group-size", group_size, group_sizes())
        for bits_value in parse_positive_ints(bits, "--bits"):
            check_value("--bits", bits_value, quantize_bits())
        if not (folder / INDEX_FILE).is_file():
            raise ValueError(f"{folder} is not a converted pipeline folder (no {INDEX_FILE}); "
                             "create one with `mlx-imgen convert`")
        index = read_json(folder / INDEX_FILE)
        if index.get("kind") == "clip":
            if check:
                raise ValueError("--check measures an image generator's quantization error; leave "
                                 f"it out for the CLIP folder {folder}")
            console.print(clip_table(folder, index))
            return
        table = Table(title=str(folder), show_header=False)
        quant = index.get("quantization")
        for key in ("alias", "family", "paradigm", "condition", "license", "dtype", "weights",
                    "created"):
            if key != "condition" or key in index:
                table.add_row(key, str(index.get(key)))
        table.add_row("quantization", f"{quant['bits']}-bit, group size {quant['group_size']}, "
                      f"{len(quant['modules'])} layers" if quant else "none (float)")
        table.add_row("sampling", json.dumps(index.get("sampling")))
        for name in ("transformer", "autoencoder"):
            config = read_json(folder / name / "config.json")
            needed = "backbone" if name == "transformer" else "config"
            if not isinstance(config, dict) or needed not in config:
                raise ValueError(f"{folder / name / 'config.json'} has no {needed!r}; the folder "
                                 "is damaged or incomplete: convert the model again")
            files = weight_files(folder / name)
            size = sum(f.stat().st_size for f in files) / 1e6
            source = config.get("source", {})
            table.add_row(name, f"{size:.1f} MB in {len(files)} file(s), {config.get('dtype')}, from "
                          f"{source.get('repo') or 'local file'} {source.get('file')} "
                          f"(sha256 {str(source.get('sha256'))[:12]}…)"
                          + (f", shared store entry {config['store']['key'][:12]}… "
                             f"({config['store']['files']})" if config.get("store") else ""))
            shape = config.get("backbone") or config.get("config")
            table.add_row(f"{name} config", json.dumps(shape))
        if (folder / "text_encoder").is_dir():  # a text tower of its own (aMUSEd's CLIP)
            config = read_json(folder / "text_encoder" / "config.json")
            files = weight_files(folder / "text_encoder")
            size = sum(f.stat().st_size for f in files) / 1e6
            table.add_row("text encoder", f"{config.get('model_type')}, {size:.1f} MB in "
                          f"{len(files)} file(s), {config.get('dtype')}, quantization "
                          f"{_quantization(config.get('quantization'))}")
        if (folder / "tokenizer").is_dir():
            table.add_row("tokenizer", ", ".join(sorted(p.name for p in
                                                        (folder / "tokenizer").iterdir())))
        if index.get("left_out"):
            table.add_row("left out", "; ".join(
                f"{part['part']} ({part['tensors']} tensors, "
                f"{part['parameters'] / 1e6:.1f}M parameters)" for part in index["left_out"]))
        console.print(table)
        if check:
            if quant:
                raise ValueError(f"{folder} is already quantized; run --check on the float folder "
                                 "it came from (it quantizes copies in memory)")
            from mlx_imgen.convert.quantize_check import check_quantization

            rows = check_quantization(folder, parse_positive_ints(bits, "--bits"), group_size)
            result = Table(title="quantization error against the float model")
            for column in rows[0]:
                result.add_column(column)
            for row in rows:
                result.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v)
                                 for v in row.values()))
            console.print(result)


def _quantization(record: dict | None) -> str:
    if not record:
        return "none (float)"
    return (f"{record['bits']}-bit, group size {record['group_size']}, "
            f"{len(record['modules'])} layers")


def clip_table(folder: Path, index: dict) -> Table:
    """`info` of a CLIP scorer folder: each encoder with its size, dtype, source and
    quantization, then the tokenizer and image-processor files."""
    from mlx_imgen.weights.jsonfile import read_json
    from mlx_imgen.weights.shards import weight_files

    table = Table(title=str(folder), show_header=False)
    for key in ("kind", "alias", "repo", "license", "dtype", "created"):
        table.add_row(key, str(index.get(key)))
    for name in ("text_encoder", "image_encoder"):
        config = read_json(folder / name / "config.json")
        if not isinstance(config.get("config"), dict):
            raise ValueError(f"{folder / name / 'config.json'} has no 'config'; the folder is "
                             "damaged or incomplete: convert the model again")
        files = weight_files(folder / name)
        size = sum(f.stat().st_size for f in files) / 1e6
        source = config.get("source") or {}
        label = name.replace("_", " ")
        table.add_row(label, f"{config.get('model_type')}, {size:.1f} MB in {len(files)} file(s), "
                      f"{config.get('dtype')}, from {source.get('repo') or 'local folder'} "
                      f"{source.get('file')} (sha256 {str(source.get('sha256'))[:12]}…)")
        table.add_row(f"{label} quantization", _quantization(config.get("quantization")))
        table.add_row(f"{label} config", json.dumps(config["config"]))
    for name in ("tokenizer", "image_processor"):
        present = sorted(p.name for p in (folder / name).iterdir()) if (folder / name).is_dir() \
            else []
        table.add_row(name.replace("_", " "), ", ".join(present) or "missing")
    return table
