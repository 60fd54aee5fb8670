"""CLIP score: the scorer equals the reference definition (transformers' CLIP features and the
formula written out here) on a tiny model; the alias converts from a local hub cache on first
use; `convert` writes a scorer folder (and a quantized one that `info` reports per encoder);
`mlx-imgen score` prints and writes the scores, and refuses bad input with one sentence, exit 2
and no JSON."""

import json
import logging

import mlx.core as mx
import numpy as np
import pytest
from conftest import assert_refused
import torch
from PIL import Image
from typer.testing import CliRunner

from clip_files import IMAGE_SIZE, write_tiny_clip
from clip_tokenizer_files import reference_tokenizer, write_clip_tokenizer
from hubcache import add_to_hub_cache, go_offline
from mlx_imgen.cli.app import app
from mlx_imgen.convert.writer import sha256_of
from mlx_imgen.registry import DEFAULT_SCORER, SCORERS
from mlx_imgen.scoring import CLIPScorer, clip_score

runner = CliRunner()
REPO = SCORERS[DEFAULT_SCORER].repo
PROMPTS = ["a photograph of an astronaut riding a horse", "a red fox sleeping in the snow",
           "an oil painting of a lighthouse at sunset", "two cats playing with yarn"]
LONG = " ".join(["a small red fox sleeping under a tree in the snow"] * 12)


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth colour gradients plus noise: features that differ from image to image
    y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)
    base = np.stack([x, y, (x + y) / 2], axis=-1) * rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A tiny CLIP repo (weights, tokenizer, preprocessor config) in a local hub cache under
    the scorer alias's repo id, and a few images."""
    root = tmp_path_factory.mktemp("score")
    repo = root / "repo"
    model = write_tiny_clip(repo)
    write_clip_tokenizer(repo, tokenizer_json=False)
    add_to_hub_cache(root / "hf", REPO, {p.name: p for p in repo.iterdir() if p.is_file()})
    images = []
    for i, size in enumerate([(IMAGE_SIZE, IMAGE_SIZE)] * 4 + [(48, 36), (30, 60)]):
        images.append(root / f"image-{i}.png")
        _image(i, size).save(images[-1])
    return {"root": root, "repo": repo, "model": model, "images": images}


@pytest.fixture
def offline(hub, tmp_path, monkeypatch):
    """The hub is offline and holds only the tiny repo; conversions go to a fresh cache."""
    return go_offline(monkeypatch, hub["root"] / "hf" / "hub", tmp_path / "cache")


def reference_scores(hub, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
    """The definition, on transformers' CLIP: 100 x cosine of the normalised features."""
    from transformers import CLIPImageProcessorPil

    tokens = reference_tokenizer(hub["repo"])(prompts, padding="max_length", truncation=True,
                                              max_length=77, return_tensors="pt")
    pixels = CLIPImageProcessorPil.from_pretrained(hub["repo"])(images, return_tensors="pt")
    with torch.no_grad():
        text = hub["model"].get_text_features(input_ids=tokens["input_ids"],
                                              attention_mask=tokens["attention_mask"])
        image = hub["model"].get_image_features(pixel_values=pixels["pixel_values"])
    text = getattr(text, "pooler_output", text)  # transformers 5 may wrap the features
    image = getattr(image, "pooler_output", image)
    text = text / text.norm(dim=-1, keepdim=True)
    image = image / image.norm(dim=-1, keepdim=True)
    return (100 * (image * text).sum(-1)).double().numpy()


def test_the_alias_converts_on_first_use_and_scores_as_the_reference(hub, offline):
    scorer = CLIPScorer.load(DEFAULT_SCORER, dtype="float32")
    assert scorer.folder.parent == offline  # converted into the model cache
    images = [Image.open(p) for p in hub["images"][:4]]
    result = scorer.score(images, PROMPTS, batch_size=3)
    expected = reference_scores(hub, images, PROMPTS)
    np.testing.assert_allclose(result.per_image, expected, rtol=1e-4, atol=1e-4)
    assert result.mean == pytest.approx(max(expected.mean(), 0), abs=1e-4)
    assert len(set(np.round(result.per_image, 3))) == 4  # the pairs differ: a real test
    # paths score as the images do, and the batch size changes nothing
    again = CLIPScorer.load(DEFAULT_SCORER, dtype="float32").score(hub["images"][:4], PROMPTS,
                                                                   batch_size=16)
    np.testing.assert_allclose(again.per_image, result.per_image, rtol=1e-5, atol=1e-5)


def test_a_long_prompt_is_truncated_with_the_tokenizers_warning(hub, offline, caplog):
    scorer = CLIPScorer.load(DEFAULT_SCORER, dtype="float32")
    image = Image.open(hub["images"][0])
    with caplog.at_level(logging.WARNING):
        result = scorer.score([image, image], [LONG, PROMPTS[0]])
    assert "cut" in caplog.text and result.truncated[0] and not result.truncated[1]
    np.testing.assert_allclose(result.per_image[0], reference_scores(hub, [image], [LONG])[0],
                               rtol=1e-4, atol=1e-4)


def test_the_python_scorer_refuses_an_empty_prompt_and_a_count_mismatch(hub, offline):
    scorer = CLIPScorer.load(DEFAULT_SCORER, dtype="float32")
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        scorer.score(hub["images"][:2], [PROMPTS[0], " "])
    with pytest.raises(ValueError, match="3 images and 2 prompts"):
        scorer.score(hub["images"][:3], PROMPTS[:2])
    one = scorer.score(hub["images"][:2], PROMPTS[0])  # one prompt, as text, for every image
    assert len(one.per_image) == 2


def test_the_mean_is_clamped_at_zero_and_each_image_is_not():
    image = mx.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    text = mx.array([[-1.0, 0.1], [0.0, -5.0], [1.0, 1.0]])
    per_image, mean = clip_score(image, text)
    cos = [-1 / np.sqrt(1.01), -1.0, 1 / np.sqrt(2)]
    np.testing.assert_allclose(per_image, 100 * np.array(cos), rtol=1e-6)
    assert mean == 0.0
    assert clip_score(image[2:], text[2:])[1] == pytest.approx(100 / np.sqrt(2), rel=1e-6)


def test_convert_writes_a_scorer_folder_from_the_hub_id(hub, offline, tmp_path):
    out = tmp_path / "clip"
    result = runner.invoke(app, ["convert", REPO, "--out", str(out), "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "model_index.json").read_text())
    assert index["kind"] == "clip" and "family" not in index
    assert index["alias"] == DEFAULT_SCORER and index["license"] == "MIT"
    for name, model_type in (("text_encoder", "clip_text"), ("image_encoder", "clip_vision")):
        config = json.loads((out / name / "config.json").read_text())
        assert config["model_type"] == model_type and config["quantization"] is None
        assert config["source"]["repo"] == REPO
        assert config["source"]["sha256"] == sha256_of(hub["repo"] / config["source"]["file"])
        assert (out / name / "model.safetensors").is_file()
    copied = sorted(p.name for p in (out / "tokenizer").iterdir())
    assert copied == ["merges.txt", "special_tokens_map.json", "tokenizer_config.json",
                      "vocab.json"]
    assert (out / "image_processor" / "preprocessor_config.json").read_bytes() == \
        (hub["repo"] / "preprocessor_config.json").read_bytes()
    # the converted folder scores as the alias does
    images = hub["images"][:2]
    by_folder = CLIPScorer.load(out).score(images, PROMPTS[:2])
    by_alias = CLIPScorer.load(DEFAULT_SCORER, dtype="float32").score(images, PROMPTS[:2])
    np.testing.assert_allclose(by_folder.per_image, by_alias.per_image, rtol=1e-5)


def test_a_quantized_conversion_scores_and_info_reports_each_encoder(hub, offline, tmp_path):
    out = tmp_path / "clip-q8"
    result = runner.invoke(app, ["convert", str(hub["repo"]), "--out", str(out), "--quantize",
                                 "8", "--group-size", "32", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "model_index.json").read_text())["quantization"]
    assert records["text_encoder"]["bits"] == records["image_encoder"]["bits"] == 8
    assert records["text_encoder"]["modules"] and records["image_encoder"]["modules"]
    assert json.loads((out / "model_index.json").read_text())["alias"] is None  # a local folder
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0, info.output
    text = " ".join(info.output.replace("│", " ").split())
    assert "text encoder quantization 8-bit, group size 32" in text
    assert "image encoder quantization 8-bit, group size 32" in text
    images = hub["images"][:4]
    quantized = CLIPScorer.load(out).score(images, PROMPTS)
    exact = reference_scores(hub, [Image.open(p) for p in images], PROMPTS)
    np.testing.assert_allclose(quantized.per_image, exact, atol=2.0)  # 8-bit: close, not equal
    # a converted float folder quantizes too
    float_folder = tmp_path / "clip-float"
    result = runner.invoke(app, ["convert", str(hub["repo"]), "--out", str(float_folder)])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["convert", str(float_folder), "--out", str(tmp_path / "q4"),
                                "--quantize", "4", "--group-size", "32"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "q4" / "text_encoder" / "config.json").read_text())[
        "quantization"]["bits"] == 4


def test_the_score_command_prints_the_table_and_writes_json(hub, offline, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n", encoding="utf-8")
    out = tmp_path / "scores.json"
    images = [str(p) for p in hub["images"][3:6]]  # square and non-square
    result = runner.invoke(app, ["score", *images, "--prompts", str(prompts), "--json", str(out),
                                 "--batch-size", "2", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert [row["prompt"] for row in saved["images"]] == PROMPTS[:3]
    assert [row["image"] for row in saved["images"]] == images
    expected = CLIPScorer.load(DEFAULT_SCORER, dtype="float32").score(images, PROMPTS[:3])
    np.testing.assert_allclose([row["score"] for row in saved["images"]], expected.per_image,
                               rtol=1e-5)
    assert saved["mean"] == pytest.approx(expected.mean)
    assert f"{expected.mean:.4f}" in result.output and "CLIP score" in result.output
    single = runner.invoke(app, ["score", *images[:2], "--prompt", PROMPTS[0], "--dtype",
                                 "float32", "--json", str(out)])
    assert single.exit_code == 0, single.output
    rows = json.loads(out.read_text())["images"]
    assert [row["prompt"] for row in rows] == [PROMPTS[0]] * 2
    np.testing.assert_allclose(
        [row["score"] for row in rows],
        CLIPScorer.load(DEFAULT_SCORER, dtype="float32").score(images[:2], PROMPTS[:1]).per_image,
        rtol=1e-5)


def test_models_lists_the_scorer_apart_from_the_generators():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    generators, scorers = result.output.split("scorers")
    assert DEFAULT_SCORER not in generators and DEFAULT_SCORER in scorers
    assert "dit-xl-2-256" in generators


def test_a_generator_command_refuses_the_scorer_with_one_sentence():
    result = runner.invoke(app, ["generate", DEFAULT_SCORER, "--class", "1"])
    assert result.exit_code == 2
    assert "CLIP scorer, not an image generator" in " ".join(result.output.split())


def _bad_inputs(hub, tmp):
    good = str(hub["images"][0])
    not_image = tmp / "notes.png"
    not_image.write_text("not an image")
    truncated = tmp / "truncated.png"
    data = hub["images"][4].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty, latin = tmp / "empty.txt", tmp / "latin.txt"
    empty.write_text("\n\n")
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    two = tmp / "two.txt"
    two.write_text("a cat\na dog\n")
    generator, scorer = tmp / "generator", tmp / "scorer"
    for folder, index in ((generator, {"family": "llamagen"}),
                          (scorer, {"kind": "clip", "dtype": "float32"})):
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps(index))
    return {
        "generator folder as model": ([good, "--prompt", "a cat", "--model", str(generator)],
                                      "not a CLIP scorer"),
        "dtype for a converted folder": ([good, "--prompt", "a cat", "--model", str(scorer),
                                          "--dtype", "float16"], "holds float32 weights"),
        "not an image": ([str(not_image), "--prompt", "a cat"], "notes.png"),
        "truncated image": ([str(truncated), "--prompt", "a cat"], "truncated.png"),
        "missing image": ([str(tmp / "gone.png"), "--prompt", "a cat"], "does not exist"),
        "both": ([good, "--prompt", "a cat", "--prompts", str(two)], "not both or neither"),
        "neither": ([good], "not both or neither"),
        "empty prompt": ([good, "--prompt", "  "], "prompt"),
        "missing prompt file": ([good, "--prompts", str(tmp / "none.txt")], "none.txt"),
        "empty prompt file": ([good, "--prompts", str(empty)], "empty.txt"),
        "not utf-8": ([good, "--prompts", str(latin)], "latin.txt"),
        "count mismatch": ([good, "--prompts", str(two)], "one prompt per image"),
        "batch size": ([good, "--prompt", "a cat", "--batch-size", "0"], "--batch-size"),
        "unconverted folder as model": ([good, "--prompt", "a cat", "--model", str(tmp)],
                                      "not a converted CLIP folder"),
    }


BAD = ["not an image", "truncated image", "missing image", "both", "neither", "empty prompt",
       "missing prompt file", "empty prompt file", "not utf-8", "count mismatch", "batch size",
       "unconverted folder as model", "generator folder as model", "dtype for a converted folder"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_sentence_exit_2_and_no_json(hub, offline, tmp_path, case):
    args, phrase = _bad_inputs(hub, tmp_path)[case]
    out = tmp_path / "scores.json"
    assert_refused(runner.invoke(app, ["score", *args, "--json", str(out)]), phrase)
    assert not out.exists()
    assert not offline.exists()  # refused before any model was converted


def test_offline_without_the_files_fails_at_once_with_the_local_command(hub, tmp_path,
                                                                         monkeypatch):
    go_offline(monkeypatch, tmp_path / "empty-hub", tmp_path / "cache")
    result = runner.invoke(app, ["score", str(hub["images"][0]), "--prompt", "a cat"])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "offline mode is on" in message
    assert "mlx-imgen convert ./openai-clip-vit-large-patch14 --out" in message
    result = runner.invoke(app, ["convert", "someone/not-cached", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "someone/not-cached" in result.output
    assert not (tmp_path / "x").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-converted is left


def test_convert_refuses_image_model_options_for_clip(hub, offline, tmp_path):
    result = runner.invoke(app, ["convert", REPO, "--family", "dit", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "CLIP model, which converts alone; leave out --family" in " ".join(result.output.split())


def test_a_local_folder_with_pickled_weights_converts_without_running_them(hub, offline,
                                                                             tmp_path):
    """pytorch_model.bin is read by the restricted unpickler; the folder converts as the hub's
    safetensors do, in float16 too."""
    import shutil

    local = tmp_path / "clip-bin"
    shutil.copytree(hub["repo"], local)
    (local / "model.safetensors").unlink()
    torch.save(hub["model"].state_dict(), local / "pytorch_model.bin")
    for dtype in ("float32", "float16"):
        out = tmp_path / f"from-bin-{dtype}"
        result = runner.invoke(app, ["convert", str(local), "--out", str(out), "--dtype", dtype])
        assert result.exit_code == 0, result.output
        source = json.loads((out / "text_encoder" / "config.json").read_text())["source"]
        assert source["file"] == "pytorch_model.bin" and source["repo"] is None
        images = hub["images"][:4]
        scores = CLIPScorer.load(out).score(images, PROMPTS).per_image
        expected = reference_scores(hub, [Image.open(p) for p in images], PROMPTS)
        np.testing.assert_allclose(scores, expected, **({"rtol": 1e-4, "atol": 1e-4}
                                                        if dtype == "float32" else {"atol": 0.5}))


def test_a_text_encoder_alone_writes_and_loads_for_text_to_image_folders(tmp_path):
    """What an aMUSEd folder's text_encoder/ is: a CLIPTextModelWithProjection written by
    write_text_encoder and read back by load_text_encoder, equal to transformers' outputs."""
    from mlx_imgen.convert.clip import write_text_encoder
    from mlx_imgen.convert.writer import write_pipeline
    from mlx_imgen.text.clip import configs_from_hf
    from mlx_imgen.text.clip_keys import clip_weights_from_hf
    from mlx_imgen.text.stored import load_text_encoder
    from mlx_imgen.weights.readers import read_state_dict

    model = write_tiny_clip(tmp_path / "hf", kind="text_with_projection", seed=3)
    text_config, _ = configs_from_hf(json.loads((tmp_path / "hf" / "config.json").read_text()))
    state = clip_weights_from_hf(read_state_dict(tmp_path / "hf" / "model.safetensors"))
    component = write_text_encoder(state["text"], text_config, {"repo": None},
                                   dtype="float32")
    write_pipeline(tmp_path / "folder", {"kind": "test"}, {"text_encoder": component})
    encoder = load_text_encoder(tmp_path / "folder" / "text_encoder")
    ids = np.array([[812, 40, 41, 42, 813] + [813] * 4], dtype=np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), output_hidden_states=True)
    encoding = encoder.encode(mx.array(ids.astype(np.int32)), layer=-2)
    np.testing.assert_allclose(np.array(encoding.pooled), ref.text_embeds.numpy(), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(np.array(encoding.hidden_states), ref.hidden_states[-2].numpy(),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("damage", ["truncated weights", "config without its keys",
                                    "no tokenizer"])
def test_a_damaged_scorer_folder_is_one_sentence(hub, offline, tmp_path, damage):
    import shutil

    folder = tmp_path / "clip"
    assert runner.invoke(app, ["convert", str(hub["repo"]), "--out", str(folder)]).exit_code == 0
    if damage == "truncated weights":
        weights = folder / "image_encoder" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "config without its keys":
        (folder / "text_encoder" / "config.json").write_text("{}")
    else:
        shutil.rmtree(folder / "tokenizer")
    out = tmp_path / "scores.json"
    result = runner.invoke(app, ["score", str(hub["images"][0]), "--prompt", "a cat",
                                 "--model", str(folder), "--json", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert message.startswith("error:") and str(folder) in message
    assert not out.exists()
