"""`mlx-imgen compare` end to end on tiny converted models of the three paradigms (Janus-Pro,
aMUSEd, Sana) and a tiny CLIP scorer, on a small suite: every image written, reports that parse,
a gallery whose images exist, and a second run that resumes instead of generating again."""

import json
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from amused_files import write_tiny_amused
from clip_files import write_tiny_clip
from clip_tokenizer_files import write_clip_tokenizer
from headless import rendered_images
from janus_files import write_tiny_janus
from janus_tokenizer_files import write_janus_tokenizer
from mlx_imgen.cli.app import app
from sana_repo_files import write_tiny_sana

runner = CliRunner()
SUITE = [
    {"id": "colors-1", "category": "colors", "prompt": "a red apple",
     "distractors": ["a green apple", "a blue apple"]},
    {"id": "colors-2", "category": "colors", "prompt": "a yellow car",
     "distractors": ["a black car", "a white car"]},
    {"id": "counting-1", "category": "counting", "prompt": "two dogs on grass",
     "distractors": ["three dogs on grass", "one dog on grass"]},
]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def converted(repo, out, *extra):
    result = invoke("convert", repo, "--out", out, "--dtype", "float32", *extra)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_tiny_amused(root / "amused-repo")
    write_tiny_sana(root / "sana-repo")
    write_janus_tokenizer(write_tiny_janus(root / "janus-repo"))
    write_tiny_clip(root / "clip-repo")
    write_clip_tokenizer(root / "clip-repo", tokenizer_json=False)
    models = [converted(root / "janus-repo", root / "janus"),
              converted(root / "amused-repo", root / "amused"),
              converted(root / "sana-repo", root / "sana")]
    scorer = converted(root / "clip-repo", root / "clip")
    suite = root / "suite.jsonl"
    suite.write_text("".join(json.dumps(p) + "\n" for p in SUITE))
    return {"root": root, "models": models, "scorer": scorer, "suite": suite}


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def run_compare(study, out):
    return invoke("compare", *study["models"], "--prompts", study["suite"], "--out", out,
                  "--scorer", study["scorer"], "--batch-size", 2)


def test_compare_runs_the_three_paradigms_and_resumes(study, tmp_path):
    out = tmp_path / "out"
    result = run_compare(study, out)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert {m["paradigm"] for m in results["models"]} == {"next-token", "masked-token",
                                                          "diffusion"}
    for model in results["models"]:
        assert model["flops_per_image"] > 0 and model["latency_s"] > 0
        assert model["images_per_s"] > 0 and 1 <= model["batch"] <= 2
        assert model["parameters"]["generator"] > 0 and model["parameters"]["decoder"] > 0
        assert model["clip_score"]["low"] <= model["clip_score"]["mean"] <= \
            model["clip_score"]["high"]
        assert set(model["following"]["by_category"]) == {"colors", "counting"}
    assert len(results["images"]) == 3 * len(SUITE)
    for image in results["images"]:
        assert (out / image["path"]).is_file()
        assert isinstance(image["ranked_first"], bool)
    page = Images()
    page.feed((out / "index.html").read_text())
    assert len(page.sources) == 3 * len(SUITE)
    assert all((out / src).is_file() for src in page.sources)
    assert "| " in (out / "results.md").read_text()
    # a browser engine draws every image of the gallery
    assert rendered_images(out / "index.html") == (3 * len(SUITE), 3 * len(SUITE))

    # a second run reuses every image: nothing is written again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("images/*/*.png")}
    assert len(stamps) == 3 * len(SUITE)
    result = run_compare(study, out)
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # an image removed is made again, alone
    gone = sorted(stamps)[0]
    gone.unlink()
    assert rendered_images(out / "index.html") == (3 * len(SUITE) - 1, 3 * len(SUITE))
    result = run_compare(study, out)
    assert result.exit_code == 0, result.output
    assert gone.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != gone)


def test_a_class_conditional_folder_is_refused(tmp_path):
    from tiny_pipelines import write_tiny_pipeline

    folder = write_tiny_pipeline(tmp_path / "dit", "dit")
    result = invoke("compare", folder, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "class-conditional" in result.output


@pytest.mark.parametrize("args, phrase", [
    (["llamagen-c2i-b-256"], "class-conditional"),
    (["no-such-model"], "neither a model alias nor a converted folder"),
    (["amused-256", "--limit", "0"], "--limit 0"),
    (["--models", " , "], "names no model"),
    (["amused-256", "--models", "sana-0.6b-512"], "not both"),
])
def test_bad_compare_options_are_one_sentence(tmp_path, args, phrase):
    result = invoke("compare", *args, "--out", tmp_path / "out")
    assert result.exit_code == 2 and phrase in result.output
    assert not (tmp_path / "out").exists()
