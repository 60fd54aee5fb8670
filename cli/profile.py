"""`mlx-imgen profile`: efficiency reports over the controlled grid or named models."""

import json
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import typer
from rich.console import Console

from mlx_imgen.backbone import Transformer
from mlx_imgen.grid import GRID_SIZES, default_plan, grid_config, latent_shape
from mlx_imgen.io import atomic_write_text
from mlx_imgen.paradigms import PARADIGMS
from mlx_imgen.profiling import Workload, profile_workload, report
from mlx_imgen.report_format import markdown, rich_table

from .errors import parse_names, parse_positive_ints, user_errors

console = Console()


def grid_workloads(sizes: list[str], paradigms: list[str], image_size: int,
                   steps: int | None) -> Iterator[Workload]:
    """One grid workload at a time, so that peak memory counts one model's weights only."""
    configs = [(size, paradigm, grid_config(paradigm, size, image_size))
               for size in sizes for paradigm in paradigms]
    plans = [default_plan(paradigm, cfg, steps) for _, paradigm, cfg in configs]
    for (size, paradigm, cfg), plan in zip(configs, plans):
        model = Transformer(cfg)
        mx.eval(model.parameters())
        work = Workload(name=f"grid-{paradigm}-{size}", size=size, model=model, plan=plan,
                        latent_shape=latent_shape(cfg) if cfg.input == "patches" else None)
        del model
        yield work
        work.model = None  # the caller is done with it: free the weights before the next model
        mx.clear_cache()


def _check_output(path: Path | None) -> None:
    if path is not None and not path.parent.exists():
        raise ValueError(f"cannot write {path}: folder {path.parent} does not exist; create it first")


def profile(
    models: list[str] = typer.Argument(None, help="Model aliases; none profiles the controlled grid."),
    sizes: str = typer.Option("S,B", help=f"Grid sizes, from {','.join(GRID_SIZES)}."),
    paradigms: str = typer.Option(",".join(PARADIGMS), help="Paradigms to profile."),
    batch_sizes: str = typer.Option("1,4", help="Batch sizes, comma-separated."),
    trials: int = typer.Option(3, help="Timed trials per batch size (after one warm-up)."),
    step_budget: float = typer.Option(2.0, help="Seconds of sampling loop timed per trial; the "
                                      "rest of the plan is extrapolated. 0 times full runs."),
    steps: int = typer.Option(None, help="Override the step count of masked-token and diffusion."),
    image_size: int = typer.Option(256, help="Image size in pixels (a multiple of 16)."),
    json_path: Path = typer.Option(None, "--json", help="Write the report as JSON here."),
    markdown_path: Path = typer.Option(None, "--markdown", help="Write the report as Markdown here."),
):
    """Measure latency, throughput, peak memory and FLOPs of each paradigm."""
    with user_errors():
        if models:
            raise ValueError(f"unknown model {models[0]!r}; no model aliases are registered yet, "
                             "so profile the controlled grid (run without arguments)")
        size_list = parse_names(sizes, tuple(GRID_SIZES), "size")
        paradigm_list = parse_names(paradigms, PARADIGMS, "paradigm")
        batches = parse_positive_ints(batch_sizes, "batch sizes")
        if trials < 1:
            raise ValueError(f"--trials must be at least 1, got {trials}")
        if step_budget < 0:
            raise ValueError(f"--step-budget must be 0 or more seconds, got {step_budget}")
        _check_output(json_path)
        _check_output(markdown_path)
        works = grid_workloads(size_list, paradigm_list, image_size, steps)
        results = []
        with console.status("profiling") as status:
            for work in works:
                for batch in batches:
                    status.update(f"profiling {work.name} at batch {batch}")
                    results.append(profile_workload(work, batch, trials=trials,
                                                    step_budget_s=step_budget or None))
        settings = {"sizes": size_list, "paradigms": paradigm_list, "batch_sizes": batches,
                    "trials": trials, "step_budget_s": step_budget, "image_size": image_size}
        rep = report(results, settings=settings)
        console.print(rich_table(rep))
        if json_path:
            atomic_write_text(json_path, json.dumps(rep, indent=2) + "\n")
        if markdown_path:
            atomic_write_text(markdown_path, markdown(rep))
