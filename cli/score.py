"""`mlx-imgen score`: CLIP score of images against prompts, as a table and as JSON."""

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import loading, user_errors
from .validate import BATCH, check_options

console = Console()


def _prompts(prompt: str | None, prompts_file: Path | None, count: int) -> list[str]:
    """One prompt per image: --prompt for all of them, or --prompts FILE's lines in order."""
    from mlx_imgen.prompts import check_prompt, read_prompts

    if (prompt is None) == (prompts_file is None):
        raise ValueError("pass either --prompt TEXT (every image against it) or --prompts FILE "
                         "(one prompt per image, in order), not both or neither")
    if prompt is not None:
        check_prompt(prompt)
        return [prompt] * count
    texts = [p.text for p in read_prompts(prompts_file)]
    if len(texts) != count:
        raise ValueError(f"{prompts_file} holds {_count(len(texts), 'prompt')} for "
                         f"{_count(count, 'image')}; give one prompt per image, in the order of "
                         "the images")
    return texts


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _check_json_target(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"--json {path} is a folder; pass a file path such as scores.json")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"--json {path}: folder {parent} does not exist; create it first")


def score(
    images: list[Path] = typer.Argument(..., help="The images to score (PNG, JPEG, ...)."),
    prompt: str = typer.Option(None, help="One prompt that every image is scored against."),
    prompts: Path = typer.Option(None, "--prompts", help="A prompt file (one per line, or JSONL): "
                                 "one prompt per image, in the order of the images."),
    model: str = typer.Option("clip-vit-large-patch14", help="The CLIP scorer: its alias, a CLIP "
                              "hub repo id, or a converted CLIP folder."),
    json_path: Path = typer.Option(None, "--json", help="Also write the scores to this JSON file."),
    batch_size: int = typer.Option(16, help="Image-prompt pairs encoded together."),
    dtype: str = typer.Option(None, help="float32, float16 or bfloat16 for an alias converted on "
                              "first use (default: float16 on a GPU, float32 on the CPU)."),
):
    """CLIP score (as torchmetrics): 100 x cosine of image and prompt features, per image and
    averaged (the mean clamped at 0)."""
    from mlx_imgen.io import atomic_write_text
    from mlx_imgen.scoring import CLIPScorer, open_image
    from mlx_imgen.weights.dtypes import resolve_dtype

    with user_errors():
        check_options({"--batch-size": (batch_size, BATCH)})
        resolve_dtype(dtype)
        texts = _prompts(prompt, prompts, len(images))
        if json_path is not None:
            _check_json_target(json_path)
        for path in images:  # every image decodes before a model loads (scored from the path)
            open_image(path)
        with loading(model):
            scorer = CLIPScorer.load(model, dtype=dtype)
        with console.status(f"scoring {len(images)} image(s)"):
            result = scorer.score(images, texts, batch_size=batch_size)
        table = Table(title=f"CLIP score ({scorer.folder.name})")
        for column in ("image", "prompt", "score"):
            table.add_column(column, overflow="fold")
        for path, text, value in zip(images, texts, result.per_image):
            table.add_row(Text(str(path)), Text(text), f"{value:.4f}")
        console.print(table)
        console.print(f"mean CLIP score: {result.mean:.4f} over {len(images)} image(s) "
                      "(per-image scores unclamped, the mean clamped at 0)", highlight=False)
        if json_path is not None:
            payload = {"model": model, "folder": str(scorer.folder), "mean": result.mean,
                       "definition": "100 x cosine of L2-normalised CLIP image and text "
                                     "features; the mean is clamped at 0 (torchmetrics)",
                       "images": [{"image": str(path), "prompt": text, "score": value,
                                   "truncated": cut or None}
                                  for path, text, value, cut in zip(images, texts,
                                                                     result.per_image,
                                                                     result.truncated)]}
            atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
            console.print(f"wrote {json_path}", highlight=False)
