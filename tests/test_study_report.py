"""The comparison's outputs from a hand-made results dict: the findings' verdicts, results.json
and results.md, the gallery page (parsed) and the plots."""

import copy
import json
import logging
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from mlx_imgen.study import gallery, report

MODELS = [
    {"model": "janus-pro-1b", "paradigm": "next-token",
     "parameters": {"text_encoder": 100_000_000, "generator": 1_500_000_000,
                    "decoder": 80_000_000},
     "flops_per_image": 2.0e12, "latency_s": 9.0, "images_per_s": 0.5, "batch": 8,
     "peak_gb": 6.5, "clip_score": {"mean": 31.0, "low": 30.0, "high": 32.0, "n": 3},
     "following": {"overall": {"share": 0.8, "n": 3},
                   "by_category": {"colours": {"share": 1.0, "n": 2},
                                   "counting | tricky": {"share": 0.5, "n": 1}}},
     "suite_seconds": 30.0, "random_weights": False},
    {"model": "amused-256", "paradigm": "masked-token",
     "parameters": {"text_encoder": 120_000_000, "generator": 600_000_000,
                    "decoder": 30_000_000},
     "flops_per_image": 5.0e12, "latency_s": 4.0, "images_per_s": 2.0, "batch": 32,
     "peak_gb": 3.0, "clip_score": {"mean": 28.0, "low": 27.0, "high": 29.0, "n": 3},
     "following": {"overall": {"share": 0.6, "n": 3},
                   "by_category": {"colours": {"share": 0.5, "n": 2}}},
     "suite_seconds": 12.0, "random_weights": False},
    {"model": "sana-600m", "paradigm": "diffusion",
     "parameters": {"text_encoder": 2_600_000_000, "generator": 600_000_000,
                    "decoder": 300_000_000},
     "flops_per_image": 4.0e13, "latency_s": 2.5, "images_per_s": 1.0, "batch": 4,
     "peak_gb": 9.0, "clip_score": {"mean": 30.0, "low": 29.0, "high": 31.5, "n": 3},
     "following": {"overall": {"share": 0.7, "n": 3},
                   "by_category": {"colours": {"share": 0.5, "n": 2}}},
     "suite_seconds": 8.0, "random_weights": False},
]
PROMPTS = [("p0", "colours", "a red cube"),
           ("p1", "colours", 'a "blue" <ball> & a cat\'s toy'),
           ("p2", "counting | tricky", "three dogs")]


def make_results(tmp_path: Path) -> dict:
    """Three models, three prompts, an image per pair on disk (amused-256 lacks p2's)."""
    images = []
    for model in MODELS:
        for i, (pid, category, prompt) in enumerate(PROMPTS):
            if model["model"] == "amused-256" and pid == "p2":
                continue
            rel = f"images/{model['model']}/{pid} #1.png"
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (40 * i, 80, 120)).save(tmp_path / rel)
            images.append({"prompt_id": pid, "category": category, "prompt": prompt,
                           "model": model["model"], "path": rel, "seconds": 1.5 + i,
                           "clip_score": 25.0 + i, "ranked_first": [True, False, None][i]})
    return {"machine": "Test machine <M2> & co", "created": "2026-11-26T21:00:00",
            "settings": {"seed": 0, "limit": 3}, "suite": {"name": "builtin", "count": 3},
            "models": copy.deepcopy(MODELS), "images": images}


def verdicts(results: dict) -> dict[str, bool | None]:
    return {f["claim"].split(" (")[0]: f["holds"] for f in report.findings(results)}


def test_findings_check_each_claim_against_the_paradigms_best(tmp_path):
    assert verdicts(make_results(tmp_path)) == {
        "follows prompts best": True,        # next-token 0.8 > 0.7 > 0.6
        "highest CLIP score": True,          # next-token 31 > diffusion 30
        "fewest FLOPs per image": True,      # next-token 2e12
        "lowest latency at batch 1": True,   # diffusion 2.5 s
        "highest throughput at the largest batch that fitted": None}


def test_findings_turn_false_when_another_paradigm_wins(tmp_path):
    results = make_results(tmp_path)
    sana = results["models"][2]
    sana.update(clip_score={"mean": 35.0, "low": 34.0, "high": 36.0, "n": 3},
                flops_per_image=1.0e12, latency_s=10.0)
    found = verdicts(results)
    assert found["highest CLIP score"] is False
    assert found["fewest FLOPs per image"] is False
    assert found["lowest latency at batch 1"] is False
    assert found["follows prompts best"] is True
    measured = report.findings(results)[1]["measured"]
    assert measured.startswith("diffusion (sana-600m) 35.00")  # best first, with the figure


def test_findings_are_none_with_one_paradigm_or_missing_data(tmp_path):
    results = make_results(tmp_path)
    results["models"] = results["models"][:1]
    results["images"] = [i for i in results["images"] if i["model"] == "janus-pro-1b"]
    assert set(verdicts(results).values()) == {None}
    results = make_results(tmp_path)
    results["models"][0]["flops_per_image"] = None  # next-token's figure missing
    results["models"][2]["latency_s"] = float("nan")
    found = verdicts(results)
    assert found["fewest FLOPs per image"] is None
    assert found["lowest latency at batch 1"] is None


def test_masked_token_stands_for_token_prediction_without_next_token(tmp_path):
    results = make_results(tmp_path)
    results["models"] = results["models"][1:]
    results["images"] = [i for i in results["images"] if i["model"] != "janus-pro-1b"]
    found = verdicts(results)
    assert found["follows prompts best"] is False  # diffusion 0.7 beats masked-token 0.6
    assert found["fewest FLOPs per image"] is None  # the study names next-token


def test_results_json_reads_back_equal_with_findings(tmp_path):
    results = make_results(tmp_path)
    paths = report.write_reports(tmp_path, results)
    assert [p.name for p in paths] == ["results.json", "results.md"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data.pop("findings") == report.findings(results)
    assert data == results


def test_markdown_has_a_row_per_model_and_the_findings(tmp_path):
    text = report.markdown(make_results(tmp_path))
    lines = text.splitlines()
    for m in MODELS:
        rows = [ln for ln in lines if ln.startswith(f"| {m['model']} | {m['paradigm']} |")]
        assert len(rows) == 1
    janus = next(ln for ln in lines if ln.startswith("| janus-pro-1b | next-token"))
    assert "31.00 [30.00, 32.00] (n=3)" in janus and "80% (n=3)" in janus
    assert "| 2,000 |" in janus and "0.5 (batch 8)" in janus and "1500.0M" in janus
    # a pipe in a category name is escaped, not a column break
    header = next(ln for ln in lines if ln.startswith("| model | colours"))
    assert "counting \\| tricky" in header
    amused = next(ln for ln in lines if ln.startswith("| amused-256 | 50%"))
    assert amused.endswith("| - |")  # no figure for a category it has none in
    assert sum(ln.endswith("| yes |") for ln in lines) == 4
    assert sum(ln.endswith("| - |") and "throughput" in ln for ln in lines) == 1


def test_bad_results_are_refused_in_one_sentence(tmp_path):
    results = make_results(tmp_path)
    del results["machine"]
    with pytest.raises(ValueError, match="results lacks machine"):
        report.write_reports(tmp_path, results)
    results = make_results(tmp_path)
    results["models"][0]["paradigm"] = "gan"
    with pytest.raises(ValueError, match="paradigm 'gan'"):
        report.findings(results)
    results = make_results(tmp_path)
    results["models"][0]["peak_gb"] = object()
    with pytest.raises(ValueError, match="cannot be written as JSON"):
        report.write_reports(tmp_path, results)
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(ValueError, match="does not exist"):
        report.write_reports(tmp_path / "missing", make_results(tmp_path))


class GalleryParser(HTMLParser):
    """The prompt rows, their cells, every img's attributes and all the page's text."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self.model_headers = 0
        self.images: list[dict] = []
        self.text: list[str] = []
        self._in_prompt = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and attrs.get("class") == "prompt":
            self.rows.append({"prompt": "", "cells": 0, "images": 0})
        elif tag == "th" and attrs.get("class") == "model":
            self.model_headers += 1
        elif tag == "th" and attrs.get("class") == "prompt":
            self._in_prompt = True
        elif tag == "td":
            self.rows[-1]["cells"] += 1
        elif tag == "img":
            self.images.append(attrs)
            self.rows[-1]["images"] += 1

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_prompt = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_prompt:
            self.rows[-1]["prompt"] += data


def test_gallery_has_a_row_per_prompt_a_column_per_model_and_images_on_disk(tmp_path):
    results = make_results(tmp_path)
    page = gallery.write_gallery(tmp_path, results)
    assert page == tmp_path / "index.html"
    text = page.read_text()
    parser = GalleryParser()
    parser.feed(text)
    assert [r["prompt"] for r in parser.rows] == [p for _, _, p in PROMPTS]
    assert parser.model_headers == 3
    assert all(r["cells"] == 3 for r in parser.rows)
    assert [r["images"] for r in parser.rows] == [3, 3, 2]  # amused-256 lacks p2's
    assert len(parser.images) == 8
    from urllib.parse import unquote
    for img in parser.images:
        assert img["loading"] == "lazy"
        assert not Path(unquote(img["src"])).is_absolute()
        assert (tmp_path / unquote(img["src"])).is_file()
    # the quotes, <, > and & of a prompt reach the reader as text, never as markup
    assert 'a &quot;blue&quot; &lt;ball&gt; &amp; a cat&#x27;s toy' in text
    assert "<ball>" not in text and "<M2>" not in text
    assert parser.text.count("✓ first") == 3 and parser.text.count("✗") == 3
    assert "not generated" in parser.text


def test_gallery_refuses_an_image_path_outside_the_output_folder(tmp_path):
    results = make_results(tmp_path)
    results["images"][0]["path"] = "../elsewhere.png"
    with pytest.raises(ValueError, match="relative to the output folder"):
        gallery.write_gallery(tmp_path, results)
    assert not (tmp_path / "index.html").exists()


def test_plots_are_png_files(tmp_path):
    results = make_results(tmp_path)
    results["models"][1]["latency_s"] = None  # left off the latency plot, not an error
    paths = gallery.write_plots(tmp_path, results)
    assert [p.name for p in paths] == ["clip_vs_flops.png", "clip_vs_latency.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as im:
            assert im.width > 100 and im.height > 100


def test_a_plot_no_model_has_both_figures_for_is_not_written(tmp_path, caplog):
    results = make_results(tmp_path)
    for m in results["models"]:
        m["latency_s"] = None
    with caplog.at_level(logging.WARNING):
        paths = gallery.write_plots(tmp_path, results)
    assert [p.name for p in paths] == ["clip_vs_flops.png"]
    assert not (tmp_path / "clip_vs_latency.png").exists()
    assert "clip_vs_latency.png is skipped" in caplog.text


def test_plots_are_skipped_with_a_logged_line_without_matplotlib(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with caplog.at_level(logging.WARNING):
        assert gallery.write_plots(tmp_path, make_results(tmp_path)) == []
    assert "plots are skipped" in caplog.text
    assert not list(tmp_path.glob("*.png"))
