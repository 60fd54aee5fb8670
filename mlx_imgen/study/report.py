"""The comparison's written results: the study's claims checked one by one against the measured
figures (`findings`), the per-model tables and the findings as Markdown (`markdown`), and both
written beside the images as results.json and results.md (`write_reports`).

The `results` dict that `mlx-imgen compare` fills (keys marked ? may be None where a figure
could not be measured, e.g. no batch fitted or nothing was scored):

    {"machine": str,                       # the machine in words ("Apple M2 Pro, 32 GB")
     "created": str,                       # ISO 8601 time of the run
     "settings": {str: any},               # the run's options (seeds, --limit, ...), shown as is
     "suite": {"name": str, "count": int}, # the prompt suite and how many prompts ran
     "models": [{
         "model": str,                     # the alias, e.g. "janus-pro-1b"
         "paradigm": "next-token" | "masked-token" | "diffusion",
         "parameters": {"text_encoder": int, "generator": int, "decoder": int},
         "flops_per_image": float?,        # FLOPs (not GFLOPs) per image
         "latency_s": float?,              # seconds for one image at batch 1
         "images_per_s": float?,           # at `batch`
         "batch": int?,                    # the largest batch that fitted
         "peak_gb": float?,                # peak memory, GB
         "clip_score": {"mean": float, "low": float, "high": float, "n": int}?,
                                           # mean CLIP score and its 95% bootstrap interval
         "following": {"overall": {"share": float, "n": int},
                       "by_category": {category: {"share": float, "n": int}}}?,
                                           # share (0-1) of images whose true prompt ranked
                                           # first among its distractors
         "suite_seconds": float?,          # the whole suite's run time for this model
         "random_weights": bool,
         "tokenizer": "model's" | "stand-in"?}],  # stand-in: one token a word, for a
                                           # random-weight run that could not fetch the repo's
     "images": [{
         "prompt_id": str | int, "category": str, "prompt": str,
         "model": str,                     # one of models[].model
         "path": str,                      # relative to the output folder
         "seconds": float?, "clip_score": float?,
         "ranked_first": bool?}]}          # None where the prompt has no distractors
"""

import json
import math
from pathlib import Path

from ..io import atomic_write_text

PARADIGMS = ("next-token", "masked-token", "diffusion")
MODEL_KEYS = ("model", "paradigm", "parameters")
TOP_KEYS = ("machine", "created", "settings", "suite", "models", "images")


def check_results(results: dict) -> None:
    """Raise ValueError, in one sentence naming what is wrong, where `results` lacks what the
    writers read (the schema is this module's docstring)."""
    if not isinstance(results, dict):
        raise ValueError(f"results must be a dict, not {type(results).__name__}")
    missing = [k for k in TOP_KEYS if k not in results]
    if missing:
        raise ValueError(f"results lacks {', '.join(missing)}; see mlx_imgen/study/report.py")
    aliases = set()
    for i, m in enumerate(results["models"]):
        lacks = [k for k in MODEL_KEYS if k not in m]
        if lacks:
            raise ValueError(f"results' model {i} lacks {', '.join(lacks)}")
        if m["paradigm"] not in PARADIGMS:
            raise ValueError(f"model {m['model']} has paradigm {m['paradigm']!r}; use one of "
                             f"{', '.join(PARADIGMS)}")
        aliases.add(m["model"])
    for image in results["images"]:
        if image.get("model") not in aliases:
            raise ValueError(f"image {image.get('path')!r} names model {image.get('model')!r}, "
                             "which is not in results' models")


# --- findings -------------------------------------------------------------------------------

def _clip_mean(m: dict) -> float | None:
    return (m.get("clip_score") or {}).get("mean")


def _following(m: dict) -> float | None:
    return ((m.get("following") or {}).get("overall") or {}).get("share")


def gflops(flops: float) -> str:
    """FLOPs as GFLOPs, whole with thousands separated from 100 up (3 significant below)."""
    g = flops / 1e9
    return f"{g:,.0f}" if g >= 100 else f"{g:.3g}"


# (claim, what the study found, figure of a model, "high"/"low" is better, expected winner:
# a tuple of paradigms, the first present of which should win, () where the study says nothing;
# how a figure reads)
TOKEN_FIRST = ("next-token", "masked-token")
CLAIMS = [
    ("follows prompts best (share of images whose true prompt ranks first)",
     "token prediction follows prompts best, led by next-token", _following, "high",
     TOKEN_FIRST, "{:.0%}".format),
    ("highest CLIP score",
     "token prediction follows prompts best, led by next-token", _clip_mean, "high",
     TOKEN_FIRST, "{:.2f}".format),
    ("fewest FLOPs per image", "next-token is by far the cheapest in inference FLOPs",
     lambda m: m.get("flops_per_image"), "low", ("next-token",),
     lambda v: f"{gflops(v)} GFLOPs"),
    ("lowest latency at batch 1", "diffusion has the lowest latency",
     lambda m: m.get("latency_s"), "low", ("diffusion",), "{:.3g} s".format),
    ("highest throughput at the largest batch that fitted", "the study makes no claim",
     lambda m: m.get("images_per_s"), "high", (), "{:.3g} images/s".format),
]


def is_number(x) -> bool:
    """A measured figure: a finite int or float (None, NaN and booleans are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_claim(models: list[dict], claim, study, figure, better, expected, fmt) -> dict:
    measured = [(figure(m), m) for m in models if is_number(figure(m))]
    measured.sort(key=lambda vm: -vm[0] if better == "high" else vm[0])
    # each paradigm stands by its best model
    best: dict[str, float] = {}
    for value, m in measured:
        best.setdefault(m["paradigm"], value)
    text = "; ".join(f"{m['paradigm']} ({m['model']}) {fmt(v)}" for v, m in measured)
    holds = None
    winner = next((p for p in expected if p in best), None)
    if len(best) >= 2 and winner is not None:
        others = [v for p, v in best.items() if p != winner]
        if better == "high":
            holds = all(best[winner] > v for v in others)
        else:
            holds = all(best[winner] < v for v in others)
    return {"claim": claim, "study": study, "measured": text or "not measured",
            "holds": holds}


def findings(results: dict) -> list[dict]:
    """The study's claims, each {"claim", "study", "measured" (every model's figure, best
    first), "holds"}: holds is True where the paradigm the study names beats every other
    paradigm's best model here (strictly; with next-token absent, masked-token stands for token
    prediction), and None where fewer than two paradigms have the figure, the paradigm the study
    names is absent, or the study makes no claim."""
    check_results(results)
    return [_check_claim(results["models"], *c) for c in CLAIMS]


# --- Markdown -------------------------------------------------------------------------------

def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(_cell, header)) + " |",
             "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]
    return lines


def _fmt(value, fmt: str) -> str:
    return fmt.format(value) if is_number(value) else "-"


def _clip_cell(m: dict) -> str:
    c = m.get("clip_score") or {}
    if not is_number(c.get("mean")):
        return "-"
    interval = (f" [{c['low']:.2f}, {c['high']:.2f}]"
                if is_number(c.get("low")) and is_number(c.get("high")) else "")
    return f"{c['mean']:.2f}{interval} (n={c.get('n', '?')})"


def _share_cell(entry: dict | None) -> str:
    if not entry or not is_number(entry.get("share")):
        return "-"
    return f"{entry['share']:.0%} (n={entry.get('n', '?')})"


def _params_cell(m: dict, part: str) -> str:
    count = (m.get("parameters") or {}).get(part)
    return _fmt(count / 1e6 if is_number(count) else None, "{:.1f}M")


def _model_row(m: dict) -> list[str]:
    images = (f"{m['images_per_s']:.3g} (batch {m.get('batch', '?')})"
              if is_number(m.get("images_per_s")) else "-")
    flops = m.get("flops_per_image")
    return [m["model"] + (" (random weights)" if m.get("random_weights") else ""),
            m["paradigm"], _clip_cell(m), _share_cell((m.get("following") or {}).get("overall")),
            gflops(flops) if is_number(flops) else "-",
            _fmt(m.get("latency_s"), "{:.2f} s"), images, _fmt(m.get("peak_gb"), "{:.2f}"),
            _params_cell(m, "text_encoder"), _params_cell(m, "generator"),
            _params_cell(m, "decoder"), _fmt(m.get("suite_seconds"), "{:.0f} s")]


MODEL_COLUMNS = ["model", "paradigm", "CLIP score [95% CI]", "prompt following", "GFLOPs/image",
                 "latency (batch 1)", "images/s", "peak GB", "text encoder", "generator",
                 "decoder", "suite time"]


def _categories(results: dict) -> list[str]:
    seen: dict[str, None] = {}
    for m in results["models"]:
        for cat in ((m.get("following") or {}).get("by_category") or {}):
            seen.setdefault(cat, None)
    return list(seen)


def markdown(results: dict) -> str:
    """results.md: the per-model table, prompt following by category, and the findings."""
    check_results(results)
    suite = results["suite"]
    lines = ["# mlx-imgen compare", "",
             f"Machine: {results['machine']}. Run: {results['created']}. Prompt suite: "
             f"{suite.get('name')} ({suite.get('count')} prompts).", ""]
    if any(m.get("random_weights") for m in results["models"]):
        lines += ["Random weights: the CLIP scores and prompt following below measure nothing "
                  "about the models; only the cost figures mean something.", ""]
    stand_ins = [m["model"] for m in results["models"] if m.get("tokenizer") == "stand-in"]
    if stand_ins:
        lines += [f"Stand-in tokenizers ({', '.join(stand_ins)}): the repos' tokenizers could "
                  "not be fetched, so each word of a prompt read as one token; a prompt's token "
                  "count, and so its cost, is close to but not the model's own.", ""]
    if not any(_clip_mean(m) is not None for m in results["models"]):
        lines += ["Not scored: no CLIP scorer ran (--scorer none), so there is no CLIP score "
                  "or prompt following.", ""]
    lines += _table(MODEL_COLUMNS, [_model_row(m) for m in results["models"]])
    lines += ["", "CLIP score: mean of 100 x cosine, with its 95% bootstrap interval. Prompt "
              "following: the share of images whose true prompt CLIP ranks first among its "
              "distractors. Parameters in millions; images/s at the largest batch that fitted.",
              ""]
    categories = _categories(results)
    if categories:
        lines += ["## Prompt following by category", ""]
        rows = [[m["model"]] + [_share_cell(((m.get("following") or {}).get("by_category")
                                             or {}).get(cat)) for cat in categories]
                for m in results["models"]]
        lines += _table(["model", *categories], rows) + [""]
    lines += ["## The study's findings, checked here", ""]
    verdict = {True: "yes", False: "no", None: "-"}
    lines += _table(["claim", "the study", "measured here (best first)", "holds"],
                    [[f["claim"], f["study"], f["measured"], verdict[f["holds"]]]
                     for f in findings(results)])
    if results.get("settings"):
        lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in
                                               results["settings"].items()) + "."]
    return "\n".join(lines) + "\n"


def write_reports(out_dir, results: dict) -> list[Path]:
    """Write results.json (results with the findings added) and results.md into `out_dir`,
    each atomically; return their paths."""
    check_results(results)
    out = Path(out_dir)
    data = {**results, "findings": findings(results)}
    try:
        text = json.dumps(data, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"results cannot be written as JSON ({err}); give plain numbers, "
                         "strings, lists and dicts, with None for a missing figure") from None
    return [atomic_write_text(out / "results.json", text + "\n"),
            atomic_write_text(out / "results.md", markdown(results))]
