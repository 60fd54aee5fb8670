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
from mlx_imgen.profiling import Workload, pipeline_workload, profile_workload, report
from mlx_imgen.report_format import markdown, rich_tables

from .errors import parse_names, parse_positive_ints, user_errors
from .validate import (BATCH, IMAGE_SIZE, MEMORY_LIMIT_GB, STEP_BUDGET, STEPS, TRIALS,
                       check_options, check_value)

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
        yield Workload(name=f"grid-{paradigm}-{size}", size=size, model=model, plan=plan,
                       latent_shape=latent_shape(cfg) if cfg.input == "patches" else None)


# a text model is profiled on stand-in prompts this long: upstream's template, BOS and
# <begin_of_image> (about 12 tokens) around a prompt of about 20
def model_workloads(models: list[str], random_weights: bool, dtype: str | None,
                    steps: int | None) -> Iterator[Workload]:
    """Named models (aliases or converted folders) with their decoders, one at a time."""
    from mlx_imgen.weights.dtypes import resolve_dtype
    from mlx_imgen.loading import load
    from mlx_imgen.pipeline import Pipeline
    from mlx_imgen.registry import get_card

    for name in models:
        if random_weights:
            get_card(name)
    for name in models:
        pipe = Pipeline.random(name, resolve_dtype(dtype)) if random_weights else \
            load(name, dtype=dtype)
        # --steps spans the models profiled together; a next-token model has none to set
        plan, _ = pipe.plan(steps=None if pipe.paradigm == "next-token" else steps)
        yield pipeline_workload(pipe, name, plan, random_weights=random_weights)


def _check_output(path: Path | None) -> None:
    if path is None:
        return
    folder = path if path.suffix == "" else path.parent
    if not folder.exists():
        raise ValueError(f"cannot write {path}: folder {folder} does not exist; create it first")


def _explicit(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def check_profile_options(ctx: typer.Context, o: dict) -> list[int]:
    """The batch sizes, once every option is in range, applies, and every batch fits memory."""
    from mlx_imgen.weights.dtypes import resolve_dtype
    from mlx_imgen.memory import grid_estimate, model_shape, generation_estimate, \
        refuse_if_too_big
    from mlx_imgen.pipeline import INDEX_FILE

    batches = parse_positive_ints(o["batch_sizes"], "batch sizes")
    for batch in batches:
        check_value("--batch-sizes", batch, BATCH)
    check_options({"--trials": (o["trials"], TRIALS), "--step-budget": (o["step_budget"], STEP_BUDGET),
                   "--steps": (o["steps"], STEPS), "--image-size": (o["image_size"], IMAGE_SIZE),
                   "--memory-limit": (o["memory_limit"], MEMORY_LIMIT_GB)})
    dtype = resolve_dtype(o["dtype"])
    models = o["models"]
    grid_only = [f"--{n.replace('_', '-')}" for n in ("sizes", "paradigms", "image_size")
                 if _explicit(ctx, n)]
    if models and grid_only:
        raise ValueError(f"{grid_only[0]} applies to the controlled grid, not to named models; "
                         f"drop it, or drop the model names")
    model_only = [f"--{n.replace('_', '-')}" for n in ("dtype", "random_weights") if o[n]]
    if not models and model_only:
        raise ValueError(f"{model_only[0]} applies to named models, not to the controlled grid; "
                         "name the models to profile, or drop it")
    if o["dtype"] and not o["random_weights"]:
        folders = [m for m in models if (Path(m) / INDEX_FILE).is_file()]
        if folders:
            raise ValueError(f"--dtype does not apply to the converted folder {folders[0]}: its "
                             "dtype was fixed when it was converted; drop --dtype")
    biggest = max(batches)
    if models:
        for name in models:
            shape = model_shape(name, dtype)
            refuse_if_too_big(generation_estimate(shape, biggest, biggest, biggest),
                              f"profiling {name} at batch {biggest}",
                              "profile smaller --batch-sizes")
    else:
        sizes = parse_names(o["sizes"], tuple(GRID_SIZES), "size")
        largest = max(sizes, key=lambda s: GRID_SIZES[s][0] * GRID_SIZES[s][1] ** 2)
        for paradigm in parse_names(o["paradigms"], PARADIGMS, "paradigm"):
            cfg = grid_config(paradigm, largest, o["image_size"])
            refuse_if_too_big(grid_estimate(cfg, paradigm, biggest),
                              f"profiling the {paradigm} grid model at batch {biggest}",
                              "profile smaller --batch-sizes, --sizes or --image-size")
    return batches


def profile(
    ctx: typer.Context,
    models: list[str] = typer.Argument(None, help="Model aliases or converted folders; none "
                                       "profiles the controlled grid."),
    sizes: str = typer.Option("S,B", help=f"Grid sizes, from {','.join(GRID_SIZES)}."),
    paradigms: str = typer.Option(",".join(PARADIGMS), help="Grid paradigms to profile."),
    batch_sizes: str = typer.Option("1,4", help="Batch sizes, comma-separated."),
    trials: int = typer.Option(3, help="Timed trials per batch size (after one warm-up)."),
    step_budget: float = typer.Option(2.0, help="Seconds of sampling loop timed per trial; the "
                                      "rest of the plan is extrapolated. 0 times full runs."),
    steps: int = typer.Option(None, help="Override the step count of masked-token and diffusion."),
    image_size: int = typer.Option(256, help="Grid image size in pixels (a multiple of 16)."),
    random_weights: bool = typer.Option(False, help="Profile aliases with random weights "
                                        "(no download)."),
    dtype: str = typer.Option(None, help="Weights dtype for named models."),
    memory_limit: float = typer.Option(None, help="GB; a batch that needs more is recorded as "
                                       "out of memory and the sweep goes on."),
    reference: str = typer.Option(None, help="Also run the same models in 'torch' (CUDA, else "
                                  "MPS, else CPU) and compare."),
    json_path: Path = typer.Option(None, "--json", help="Write the report as JSON here."),
    markdown_path: Path = typer.Option(None, "--markdown", help="Write the report as Markdown here."),
    plot: Path = typer.Option(None, help="Write PNG plots into this folder (needs matplotlib)."),
    out: Path = typer.Option(None, "--out", "--output", help="An existing folder for the report: "
                             "profile.json and profile.md, unless --json or --markdown name other "
                             "files."),
):
    """Measure latency, throughput, peak memory and FLOPs of each paradigm."""
    with user_errors():
        if out is not None:
            if not out.is_dir():
                raise ValueError(f"--out {out} is not an existing folder; create it first")
            json_path = json_path or out / "profile.json"
            markdown_path = markdown_path or out / "profile.md"
        batches = check_profile_options(ctx, locals())
        if reference not in (None, "torch"):
            raise ValueError(f"unknown --reference {reference!r}; the only reference is 'torch'")
        if reference:
            from mlx_imgen.reference import require_torch
            require_torch()
        if plot:
            from mlx_imgen.plots import require_matplotlib
            require_matplotlib()
        for path in (json_path, markdown_path):
            _check_output(path)
        if plot and not plot.is_dir():
            raise ValueError(f"--plot {plot} is not an existing folder; create it first")
        if models:
            works = model_workloads(models, random_weights, dtype, steps)
            settings = {"models": models, "random_weights": random_weights}
        else:
            size_list = parse_names(sizes, tuple(GRID_SIZES), "size")
            paradigm_list = parse_names(paradigms, PARADIGMS, "paradigm")
            works = grid_workloads(size_list, paradigm_list, image_size, steps)
            settings = {"sizes": size_list, "paradigms": paradigm_list, "image_size": image_size}
        settings.update(batch_sizes=batches, trials=trials, step_budget_s=step_budget,
                        memory_limit_gb=memory_limit, reference=reference)
        limit = int(memory_limit * 1e9) if memory_limit else None
        results, reference_results = [], [] if reference else None
        with console.status("profiling") as status:
            for work in works:
                for batch in batches:
                    status.update(f"profiling {work.name} at batch {batch}")
                    results.append(profile_workload(work, batch, trials=trials,
                                                    step_budget_s=step_budget or None,
                                                    memory_limit=limit))
                    if reference and results[-1]["status"] == "ok":
                        from mlx_imgen.reference.child import profile_reference_in_child

                        status.update(f"profiling {work.name} at batch {batch} in torch")
                        reference_results.append(profile_reference_in_child(
                            work, batch, trials=trials, step_budget_s=step_budget or None))
                # free the weights before the next model is built
                work.model = work.decode = work.autoencoder = None
                mx.clear_cache()
        rep = report(results, settings=settings, reference=reference_results)
        for table in rich_tables(rep):
            console.print(table)
        if json_path:
            atomic_write_text(json_path, json.dumps(rep, indent=2) + "\n")
        if markdown_path:
            atomic_write_text(markdown_path, markdown(rep))
        if plot:
            from mlx_imgen.plots import write_plots

            for path in write_plots(rep, plot):
                console.print(f"wrote {path}")
