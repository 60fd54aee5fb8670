"""Prompts in: prompt files (lines or JSONL) read as written, every bad prompt input refused
through the CLI in one sentence before anything loads, class models refusing prompts and text
models refusing classes, and a text run's PNGs recording each image's prompt and seed."""

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mlx_imgen import families
from mlx_imgen.cli.app import app
from mlx_imgen.pipeline import Pipeline
from mlx_imgen.prompts import Prompt, as_prompts, check_prompt, image_seeds, read_prompts
from tiny_pipelines import write_tiny_pipeline

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_pipeline(tmp_path_factory.mktemp("prompts") / "tiny", "llamagen")


@pytest.fixture
def text_family(monkeypatch):
    """LlamaGen declared text-conditioned: how a text family looks to the CLI and the API."""
    monkeypatch.setitem(families.FAMILIES, "llamagen",
                        dataclasses.replace(families.FAMILIES["llamagen"], condition="text"))


def _write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_plain_file_one_prompt_a_line(tmp_path):
    path = _write(tmp_path / "p.txt", "\ufeffa red fox  \n\n   \n  a cat on a mat\t\r\nthe end")
    assert read_prompts(path) == [Prompt("a red fox"), Prompt("  a cat on a mat"),
                                  Prompt("the end")]


@pytest.mark.parametrize("name", ["p.jsonl", "p.txt"])
def test_jsonl_by_suffix_or_first_line(tmp_path, name):
    lines = ['{"prompt": "a red fox", "seed": 7, "negative_prompt": "blurry"}', "",
             '{"prompt": "a cat", "seed": 0}', '{"prompt": "東京 🐱"}']
    assert read_prompts(_write(tmp_path / name, "\n".join(lines))) == [
        Prompt("a red fox", 7, "blurry"), Prompt("a cat", 0), Prompt("東京 🐱")]


def test_a_plain_line_in_a_jsonl_file_is_bad_json(tmp_path):
    path = _write(tmp_path / "p.jsonl", "a red fox\n")
    with pytest.raises(ValueError, match=f"line 1 of {path} is not valid JSON"):
        read_prompts(path)


def test_prompts_checked_and_given_the_run_negative():
    assert as_prompts(["a", Prompt("b", 3, "own")], "blurry") == [
        Prompt("a", None, "blurry"), Prompt("b", 3, "own")]
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        as_prompts(["a", " \t"])
    with pytest.raises(ValueError, match="--prompt is empty"):
        check_prompt("")


def test_image_seeds_own_seed_counts_from_zero_others_follow_the_run():
    fox, cat = Prompt("fox", seed=42), Prompt("cat")
    assert image_seeds([fox, fox, cat, cat, fox], seed=5, first_index=10) == [
        (42, 0), (42, 1), (5, 12), (5, 13), (42, 2)]


def _listing(*roots) -> list[str]:
    return sorted(str(p) for root in roots for p in Path(root).rglob("*"))


def _refused(argv, words, *roots):
    before = _listing(*roots)
    result = runner.invoke(app, argv)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert _listing(*roots) == before
    return lines[0]


BAD_FILES = {  # name: (file content or None for no file, words of the one line)
    "missing": (None, ["does not exist"]),
    "empty": ("", ["holds no prompts"]),
    "only blank lines": ("\n   \n\t\n", ["holds no prompts"]),
    "not utf-8": (b"a red fox\n\xff\xfe caf\xe9\n", ["is not UTF-8"]),
    "bad json on line 3": ('{"prompt": "a"}\n\n{"prompt": "b",\n', ["line 3 of", "not valid JSON"]),
    "not an object": ('{"prompt": "a"}\n["b"]\n', ["line 2 of", "not an object"]),
    "unknown key": ('{"prompt": "a", "guidance": 4}\n', ["line 1 of", "unknown key 'guidance'"]),
    "no prompt": ('{"seed": 1}\n', ["line 1 of", "has no \"prompt\""]),
    "prompt not text": ('{"prompt": 5}\n', ["line 1 of", "\"prompt\" must be a string"]),
    "seed not int": ('{"prompt": "a", "seed": "7"}\n', ["\"seed\" must be a whole number"]),
    "seed bool": ('{"prompt": "a", "seed": true}\n', ["\"seed\" must be a whole number"]),
    "seed negative": ('{"prompt": "a", "seed": -1}\n', ["\"seed\" must be a whole number"]),
    "seed float": ('{"prompt": "a", "seed": 1.5}\n', ["\"seed\" must be a whole number"]),
    "negative not text": ('{"prompt": "a", "negative_prompt": ["x"]}\n',
                          ["\"negative_prompt\" must be a string"]),
    "empty prompt": ('{"prompt": "a"}\n{"prompt": "  "}\n', ["the prompt on line 2 of",
                                                             "is empty"]),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_prompt_files_are_one_sentence_naming_the_file(folder, text_family, tmp_path, case):
    content, words = BAD_FILES[case]
    path = tmp_path / "prompts.jsonl"
    if content is not None:
        _write(path, content)
    _refused(["generate", str(folder), "--prompts", str(path), "--out", str(tmp_path / "x.png")],
             [str(path), *words], tmp_path, folder)


def test_a_folder_as_prompt_file_is_refused(folder, text_family, tmp_path):
    _refused(["generate", str(folder), "--prompts", str(tmp_path), "--out",
              str(tmp_path / "x.png")], [f"prompt file {tmp_path} is a folder"], tmp_path)


BAD_TEXT_RUNS = {
    "empty prompt": (["--prompt", ""], ["--prompt is empty"]),
    "whitespace prompt": (["--prompt", "a cat", "--prompt", " \t "], ["--prompt is empty"]),
    "prompt and prompts": (["--prompt", "a cat", "--prompts", "p.txt"],
                           ["--prompt or --prompts FILE, not both"]),
    "class on a text model": (["--class", "207"], ["is a text-to-image model",
                                                   "not --class"]),
    "class beside a prompt": (["--class", "207", "--prompt", "a dog"], ["not --class"]),
    "no prompt": ([], ["is a text-to-image model: pass --prompt TEXT or --prompts FILE"]),
}


@pytest.mark.parametrize("case", BAD_TEXT_RUNS)
def test_bad_prompt_options_on_a_text_model(folder, text_family, tmp_path, case):
    extra, words = BAD_TEXT_RUNS[case]
    _refused(["generate", str(folder), *extra, "--out", str(tmp_path / "x.png")], words,
             tmp_path, folder)


@pytest.mark.parametrize("extra, flag", [
    (["--prompt", "a red fox"], "--prompt"),
    (["--prompts", "prompts.txt"], "--prompts"),
    (["--class", "1", "--negative-prompt", "blurry"], "--negative-prompt")])
def test_class_model_refuses_prompts_before_anything_loads(folder, tmp_path, monkeypatch, extra,
                                                          flag):
    def never(*args, **kwargs):
        raise AssertionError("loaded or converted a model")

    monkeypatch.setattr("mlx_imgen.loading.load", never)
    monkeypatch.setattr("mlx_imgen.convert.converter.convert", never)
    # the alias names its family on its card: nothing downloaded or converted to find out
    for model in (str(folder), "llamagen-c2i-b-256"):
        line = _refused(["generate", model, *extra, "--out", str(tmp_path / "x.png")],
                        [f"{model} is a class-conditional model: pass --class (ImageNet ids or "
                         f"names), not {flag}"], tmp_path, folder)
        assert "prompts.txt" not in line  # the file is never read


def test_pipeline_refuses_prompts_for_a_class_model_and_classes_for_a_text_model(folder,
                                                                                  monkeypatch):
    pipe = Pipeline(folder)
    with pytest.raises(ValueError, match="is a class-conditional model: pass --class"):
        pipe.generate(prompts=["a red fox"])
    with pytest.raises(ValueError, match="not --negative-prompt"):
        pipe.generate([1], negative_prompt="blurry")
    monkeypatch.setattr(pipe, "family", dataclasses.replace(pipe.family, condition="text"))
    with pytest.raises(ValueError, match="is a text-to-image model: pass --prompt"):
        pipe.generate([1])
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        pipe.generate(prompts=["a red fox", ""])
    with pytest.raises(ValueError, match="no prompts given"):
        pipe.generate(prompts=[])


def test_text_run_records_prompts_seeds_and_negative_in_each_png(folder, text_family, tmp_path,
                                                                 monkeypatch):
    calls = []

    def sampled(self, classes=None, *, prompts=None, negative_prompt=None, **kwargs):
        calls.append((classes, prompts, negative_prompt, kwargs["seed"], kwargs["first_index"]))
        return [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(len(prompts))]

    # the sampler arrives with the first text model (issue 14); here only the plumbing runs
    monkeypatch.setattr(Pipeline, "generate", sampled)
    prompts = _write(tmp_path / "p.jsonl", '{"prompt": "a red fox", "seed": 42, '
                     '"negative_prompt": "snow"}\n{"prompt": "a cat"}\n')
    result = runner.invoke(app, ["generate", str(folder), "--prompts", str(prompts), "--n", "2",
                                 "--seed", "3", "--negative-prompt", "blurry", "--out",
                                 str(tmp_path / "img.png")])
    assert result.exit_code == 0, result.output
    fox, cat = Prompt("a red fox", 42, "snow"), Prompt("a cat")
    assert calls == [(None, [fox, fox, cat, cat], "blurry", 3, 0)]
    texts = [Image.open(tmp_path / f"img-{i}.png").text for i in range(4)]
    assert [(t["prompt"], t["negative_prompt"], t["seed"], t["index"]) for t in texts] == [
        ("a red fox", "snow", "42", "0"), ("a red fox", "snow", "42", "1"),
        ("a cat", "blurry", "3", "2"), ("a cat", "blurry", "3", "3")]
    assert "classes" not in texts[0] and "class" not in texts[0]
    assert json.loads(texts[0]["prompts"]) == [
        {"prompt": "a red fox", "seed": 42, "negative_prompt": "snow"}, {"prompt": "a cat"}]
    assert texts[1]["regenerate"] == (f"mlx-imgen generate {folder} --prompt 'a red fox' "
                                      "--negative-prompt snow --seed 42 --index 1")
    assert texts[3]["regenerate"] == (f"mlx-imgen generate {folder} --prompt 'a cat' "
                                      "--negative-prompt blurry --seed 3 --index 3")


def test_the_memory_estimate_bounds_the_longest_prompt_row_before_loading():
    """generate's estimate takes the longest prompt, its own or the run's negative prompt, at
    one token per UTF-8 byte plus the template: never fewer tokens than any tokenizer makes."""
    from mlx_imgen.cli.generate import TEMPLATE_TOKENS, prompt_token_bound

    assert prompt_token_bound(None) is None
    prompts = [Prompt("a fox"), Prompt("é" * 10, negative="blurry")]
    assert prompt_token_bound(prompts) == 20 + TEMPLATE_TOKENS
    assert prompt_token_bound(prompts, negative="x" * 40) == 40 + TEMPLATE_TOKENS
