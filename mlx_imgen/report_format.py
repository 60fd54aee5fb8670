"""Render profile reports as a rich table and as Markdown."""

from rich.table import Table

COLUMNS = ["paradigm", "size", "params", "batch", "passes/img", "GFLOPs/img", "latency",
           "images/s", "peak mem", "GFLOP/s"]


def _row(r: dict) -> list[str]:
    mark = "*" if r["extrapolated"] else ""
    return [
        r["paradigm"], r["size"] or r["model"], f"{r['parameters'] / 1e6:.1f}M", str(r["batch_size"]),
        str(r["forward_passes_per_image"]), f"{r['gflops_per_image']:.1f}",
        f"{r['latency_s']['median']:.2f} s{mark}", f"{r['images_per_s']:.3f}{mark}",
        f"{r['peak_memory_gb']:.2f} GB", f"{r['achieved_gflops_per_s']:.1f}",
    ]


def _footnotes(report: dict) -> list[str]:
    env = report["environment"]
    notes = [f"Device: {env['device']} ({env['backend']}), {env['processor']}, "
             f"{env['cpu_count']} cores; MLX {env['mlx_version']}; BLAS: {env['blas']}.",
             "Latency is the median wall time of one batch over the trials; "
             "images/s is batch size / latency.",
             report["flops_convention"]]
    extrapolated = [r for r in report["results"] if r["extrapolated"]]
    if extrapolated:
        notes.append("* extrapolated: the sampling loop was timed over fewer steps than the full "
                     "plan and scaled to the full step count (measured/total steps: "
                     + ", ".join(sorted({f"{r['paradigm']} {r['measured_steps']}/{r['steps']}"
                                         for r in extrapolated})) + ").")
    return notes


def rich_table(report: dict) -> Table:
    table = Table(title="mlx-imgen profile", caption="\n".join(_footnotes(report)),
                  caption_justify="left")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("paradigm", "size") else "right")
    for r in report["results"]:
        table.add_row(*_row(r))
    return table


def markdown(report: dict) -> str:
    lines = ["# mlx-imgen profile", "", f"Created {report['created']}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in report["results"]]
    lines += [""] + [f"- {note}" for note in _footnotes(report)]
    return "\n".join(lines) + "\n"
