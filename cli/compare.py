"""`mlx-imgen compare`: text-to-image models of the three paradigms side by side on one prompt
suite: images, CLIP score and prompt following, cost, the study's findings, a gallery."""

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from .errors import loading, user_errors
from .generate import model_family
from .validate import BATCH, SEED, check_options

console = Console(stderr=True)
NO_SCORER = "none"
# where --stand-in-tokenizers writes each alias's stand-in, in the output folder
STAND_IN_FOLDER = "stand-in-tokenizers"


def random_pipeline(alias: str, dtype: str | None, seed: int, stand_in_folder: Path | None):
    """The alias's architecture with random weights drawn from `seed` (so a resumed run draws
    the same), reading prompts with the repo's own tokenizer, or with a stand-in written into
    `stand_in_folder` (convert/tokenizers.py) where one is given."""
    import mlx.core as mx

    from mlx_imgen.convert.tokenizers import fetch_tokenizer, write_stand_in_tokenizer
    from mlx_imgen.pipeline import Pipeline
    from mlx_imgen.weights.dtypes import resolve_dtype

    if stand_in_folder is None:
        tokenizer = fetch_tokenizer(alias)
    else:
        tokenizer = write_stand_in_tokenizer(alias, stand_in_folder / alias)
    mx.random.seed(seed)
    pipe = Pipeline.random(alias, resolve_dtype(dtype), tokenizer=tokenizer)
    pipe.index["stand_in_tokenizer"] = stand_in_folder is not None
    return pipe


def check_compare_options(models: list[str], out: Path, limit: int | None,
                          random_weights: bool = False, stand_in_tokenizers: bool = False) -> None:
    """Refusals before anything loads: an output folder without its parent, a class model, a
    folder given for random weights, stand-in tokenizers for real weights."""
    from mlx_imgen.registry import CARDS

    if stand_in_tokenizers and not random_weights:
        raise ValueError("--stand-in-tokenizers goes with --random-weights (a converted model "
                         "reads prompts with its own tokenizer); add --random-weights or drop it")
    if not out.parent.exists():
        raise ValueError(f"folder {out.parent} does not exist; create it first or choose "
                         "another --out")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit} must be at least 1")
    for model in models:
        card = CARDS.get(model)
        family = model_family(model)
        if family is not None and family.condition != "text":
            raise ValueError(f"{model} is a class-conditional model; compare runs text-to-image "
                             "models (mlx-imgen models lists them)")
        if card is None and random_weights:
            raise ValueError(f"--random-weights takes model aliases, and {model} is not one; "
                             "see `mlx-imgen models`")
        if card is None and not Path(model).is_dir():
            raise ValueError(f"{model} is neither a model alias nor a converted folder; see "
                             "`mlx-imgen models`")


def compare(
    models: list[str] = typer.Argument(None, help="Text-to-image aliases or converted folders "
                                       "(default: janus-pro-1b, amused-256, sana-0.6b-512)."),
    out: Path = typer.Option(..., "--out", "--output", help="The folder for images and "
                             "reports (a run there before is resumed)."),
    prompts: Path = typer.Option(None, "--prompts", help="A prompt suite (JSONL with "
                                 "categories and distractors, or one prompt per line; default: "
                                 "the built-in suite)."),
    limit: int = typer.Option(None, help="Only the suite's first N prompts."),
    seed: int = typer.Option(0, help="Image i of every model draws from (seed, i)."),
    batch_size: int = typer.Option(4, help="The most images in the throughput batch (lowered "
                                   "to what the memory estimate fits)."),
    scorer: str = typer.Option("clip-vit-large-patch14", help="The CLIP scorer (alias, hub id "
                               "or converted folder), or none: cost figures alone."),
    dtype: str = typer.Option(None, help="Weights dtype when converting an alias on first use "
                              "(or of random weights)."),
    only: str = typer.Option(None, "--models", help="Comma-separated models, instead of "
                             "naming them as arguments."),
    random_weights: bool = typer.Option(False, help="Random weights of the aliases' published "
                                        "shapes (only their tokenizers are fetched): cost "
                                        "figures without a download; the images are noise."),
    stand_in_tokenizers: bool = typer.Option(False, help="With --random-weights, on a machine "
                                             "that cannot reach the hub: read prompts one "
                                             "token a word with each family's special tokens "
                                             "instead of fetching the repos' tokenizers."),
):
    """Run text-to-image models on one prompt suite and compare them."""
    import mlx.core as mx

    from mlx_imgen.loading import load
    from mlx_imgen.scoring import CLIPScorer
    from mlx_imgen.study import compare as study
    from mlx_imgen.study.gallery import write_gallery, write_plots
    from mlx_imgen.study.report import markdown, write_reports
    from mlx_imgen.study.suite import load_suite

    with user_errors():
        if only is not None and models:
            raise ValueError("name the models as arguments or with --models, not both")
        if only is not None:
            models = [name.strip() for name in only.split(",") if name.strip()]
            if not models:
                raise ValueError(f"--models {only!r} names no model; give aliases or folders "
                                 "separated by commas")
        models = list(models or study.DEFAULT_MODELS)
        check_options({"--seed": (seed, SEED), "--batch-size": (batch_size, BATCH)})
        check_compare_options(models, out, limit, random_weights, stand_in_tokenizers)
        score = scorer.lower() != NO_SCORER
        suite = load_suite(prompts)[:limit]
        out.mkdir(exist_ok=True)
        runs = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=console, disable=not console.is_terminal) as progress:
            for model in models:
                task = progress.add_task(model, total=len(suite))
                with loading(model):
                    stand_ins = out / STAND_IN_FOLDER if stand_in_tokenizers else None
                    pipe = random_pipeline(model, dtype, seed, stand_ins) if random_weights \
                        else load(model, dtype=dtype)
                run = study.run_model(
                    pipe, model, suite, out, seed=seed, batch=batch_size, dtype=dtype,
                    on_image=lambda done, total, t=task: progress.update(t, completed=done))
                runs.append(run)
                if not console.is_terminal:  # a log's progress: a line per model
                    console.print(f"{model}: {len(suite)} images "
                                  f"({sum(run.generated)} generated) in "
                                  f"{run.measures['suite_seconds']:.0f} s")
                del pipe  # one generator in memory at a time
                mx.clear_cache()
        if score:
            with console.status(f"scoring with {scorer}"), loading(scorer):
                study.score_runs(runs, suite, CLIPScorer.load(scorer))
        results = study.results_of(runs, suite, out, suite=str(prompts or "built-in"),
                                   settings={"models": models, "seed": seed, "limit": limit,
                                             "batch_size": batch_size, "scorer": scorer,
                                             "random_weights": random_weights,
                                             "stand_in_tokenizers": stand_in_tokenizers})
        written = write_reports(out, results) + [write_gallery(out, results)]
        written += write_plots(out, results)
        console.print(markdown(results))
        for path in written:
            console.print(f"wrote {path}")
