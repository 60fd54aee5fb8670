"""The comparison's gallery: one self-contained HTML page (prompts as rows, grouped by category;
models as columns; each image with its time and CLIP score) and the plots of CLIP score against
FLOPs per image and against latency (matplotlib, optional)."""

import html
import io
import logging
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from ..io import atomic_write_bytes, atomic_write_text
from .report import check_results, is_number

log = logging.getLogger(__name__)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: 4px; vertical-align: top; }
th.prompt { text-align: left; font-weight: normal; max-width: 22em; }
tr.category th { background: #f0f0f0; text-align: left; }
figure { margin: 0; }
img { width: 192px; height: auto; display: block; }
figcaption { font-size: 0.8em; color: #555; }
.first { color: #080; font-weight: bold; }
.missed { color: #a00; }
""".strip()


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _src(path: str) -> str:
    """An image's relative URL: the page sits in the output folder with the images under it,
    so an absolute path or one leaving the folder would break when the folder moves."""
    p = PurePosixPath(str(path).replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"image path {path!r} must be relative to the output folder and inside "
                         "it; give it as e.g. images/MODEL/PROMPT.png")
    return quote(p.as_posix())


def _number(value, fmt: str) -> str | None:
    return fmt.format(value) if is_number(value) else None


def _caption(image: dict) -> str:
    parts = [s for s in (_number(image.get("seconds"), "{:.2f} s"),
                         _number(image.get("clip_score"), "CLIP {:.1f}")) if s]
    text = _e(" · ".join(parts))
    ranked = image.get("ranked_first")
    if ranked is True:
        text += ' <span class="first" title="CLIP ranks the true prompt first">✓ first</span>'
    elif ranked is False:
        text += (' <span class="missed" title="CLIP ranks a distractor above the true prompt">'
                 "✗</span>")
    return text


def _cell(image: dict | None) -> str:
    if image is None:
        return "<td>not generated</td>"
    return (f'<td><figure><img src="{_e(_src(image["path"]))}" alt="{_e(image["prompt"])}" '
            f'loading="lazy"><figcaption>{_caption(image)}</figcaption></figure></td>')


def _model_header(m: dict) -> str:
    clip = _number((m.get("clip_score") or {}).get("mean"), "CLIP {:.2f}")
    share = _number(((m.get("following") or {}).get("overall") or {}).get("share"),
                    "following {:.0%}")
    details = ", ".join(s for s in (clip, share) if s)
    random = "<br>random weights" if m.get("random_weights") else ""
    random += "<br>stand-in tokenizer" if m.get("tokenizer") == "stand-in" else ""
    return (f'<th class="model">{_e(m["model"])}<br><small>{_e(m["paradigm"])}'
            f'{"<br>" + _e(details) if details else ""}{random}</small></th>')


def gallery_html(results: dict) -> str:
    """The page's text: prompts in the order of `results["images"]`, grouped by category in the
    order each first appears; a cell per model, "not generated" where it has no image."""
    check_results(results)
    models = results["models"]
    prompts: dict = {}   # prompt_id -> {"prompt", "category", "images": {model: image}}
    for image in results["images"]:
        row = prompts.setdefault(image["prompt_id"], {"prompt": image["prompt"],
                                                      "category": image["category"],
                                                      "images": {}})
        row["images"][image["model"]] = image
    categories: dict[str, list[dict]] = {}
    for row in prompts.values():
        categories.setdefault(row["category"], []).append(row)
    title = f"mlx-imgen compare on {results['machine']}"
    lines = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{_e(title)}</title>", f"<style>\n{STYLE}\n</style>", "</head>", "<body>",
             f"<h1>{_e(title)}</h1>",
             f"<p>{_e(results['created'])}; prompt suite {_e(results['suite'].get('name'))} "
             f"({_e(results['suite'].get('count'))} prompts). ✓: CLIP ranks the true prompt "
             "above its distractors.</p>", "<table>", "<thead><tr><th>prompt</th>"
             + "".join(_model_header(m) for m in models) + "</tr></thead>", "<tbody>"]
    for category, rows in categories.items():
        lines.append(f'<tr class="category"><th colspan="{len(models) + 1}">{_e(category)}'
                     "</th></tr>")
        for row in rows:
            cells = "".join(_cell(row["images"].get(m["model"])) for m in models)
            lines.append(f'<tr class="prompt"><th class="prompt" scope="row">{_e(row["prompt"])}'
                         f"</th>{cells}</tr>")
    lines += ["</tbody>", "</table>", "</body>", "</html>"]
    return "\n".join(lines) + "\n"


def write_gallery(out_dir, results: dict) -> Path:
    """Write index.html into `out_dir` (atomically) and return its path."""
    return atomic_write_text(Path(out_dir) / "index.html", gallery_html(results))


# --- plots ----------------------------------------------------------------------------------

# file -> (the model's figure, its scale on the axis, the axis label)
PLOTS = {"clip_vs_flops.png": ("flops_per_image", 1e-9, "GFLOPs per image (log scale)"),
         "clip_vs_latency.png": ("latency_s", 1.0, "latency at batch 1, s (log scale)")}
COLOURS = {"next-token": "tab:blue", "masked-token": "tab:orange", "diffusion": "tab:green"}


def write_plots(out_dir, results: dict) -> list[Path]:
    """Write the two plots (CLIP score, with its 95% interval, against FLOPs per image and
    against latency; one labelled point per model; log x) into `out_dir` and return them;
    without matplotlib, log that the plots are skipped and return []. A model missing either
    figure is left off its plot, and a plot with no model is not written."""
    check_results(results)
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed, so the plots are skipped; install it with "
                    "pip install 'mlx-imgen[plot]'")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    from matplotlib.ticker import NullLocator

    for name, (key, scale, xlabel) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = []
        for m in results["models"]:
            x, clip = m.get(key), m.get("clip_score") or {}
            y = clip.get("mean")
            if not (is_number(x) and is_number(y) and x > 0):
                continue
            x *= scale
            xs.append(x)
            low, high = clip.get("low"), clip.get("high")
            low, high = (low if is_number(low) else y), (high if is_number(high) else y)
            ax.errorbar([x], [y], yerr=[[max(y - low, 0)], [max(high - y, 0)]], fmt="o",
                        color=COLOURS[m["paradigm"]], capsize=3)
            ax.annotate(f"{m['model']} ({m['paradigm']})", (x, y), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        if not xs:  # no model has both figures: an empty plot says nothing
            plt.close(fig)
            log.warning("no model has both a CLIP score and %s, so %s is skipped", key, name)
            continue
        ax.set_xscale("log")
        # ticks at the models' own figures: a log axis spanning less than a decade has no
        # labelled ticks, and its minor labels overlap over several
        ax.xaxis.set_minor_locator(NullLocator())
        ticks = sorted(set(xs))
        ax.set_xticks(ticks, [f"{x:,.0f}" if x >= 100 else f"{x:.3g}" for x in ticks])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("CLIP score")
        ax.set_title(f"CLIP score on {results['machine']}", fontsize=9)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(atomic_write_bytes(Path(out_dir) / name, buffer.getvalue()))
    return paths
