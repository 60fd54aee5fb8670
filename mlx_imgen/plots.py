"""PNG plots of a profile report (matplotlib extra): latency and throughput against batch size,
and FLOPs per image on a log scale."""

from pathlib import Path

PLOTS = ("latency_vs_batch.png", "throughput_vs_batch.png", "flops_per_image.png")


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib; install it with pip install "
                         "'mlx-imgen[plot]'") from None
    matplotlib.use("Agg")
    return matplotlib


def _series(report: dict) -> dict[str, list[dict]]:
    series: dict[str, list[dict]] = {}
    for r in report["results"]:
        if r.get("status") == "ok":
            label = f"{r['paradigm']} {r['size']}" if r["size"] else r["model"]
            if isinstance(r.get("quantization"), dict):
                label += f" {r['quantization']['bits']}-bit"
            series.setdefault(label, []).append(r)
    return {k: sorted(v, key=lambda r: r["batch_size"]) for k, v in series.items()}


def write_plots(report: dict, folder: Path) -> list[Path]:
    """Write the three plots into `folder` (each through a temporary file) and return them."""
    require_matplotlib()
    import matplotlib.pyplot as plt

    from .io import atomic_write_bytes

    series = _series(report)
    device = report["environment"].get("gpu") or report["environment"]["processor"]
    paths = []

    def save(fig, name):
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(atomic_write_bytes(Path(folder) / name, buffer.getvalue()))

    for name, key, ylabel in (("latency_vs_batch.png", "latency", "latency per batch (s)"),
                              ("throughput_vs_batch.png", "images_per_s", "images / s")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, rows in series.items():
            ys = [r["latency_s"]["median"] if key == "latency" else r[key] for r in rows]
            ax.plot([r["batch_size"] for r in rows], ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} on {device}")
        ax.legend(fontsize=8)
        save(fig, name)

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = list(series)
    ax.bar(labels, [series[k][0]["gflops_per_image"] for k in labels])
    ax.set_yscale("log")
    ax.set_ylabel("GFLOPs per image (log scale)")
    ax.set_title("analytic FLOPs per image")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    save(fig, "flops_per_image.png")
    return paths
