"""`mlx-imgen compare --random-weights` on the three aliases: random weights of their
architectures (shrunk here: the published ones are gigabytes), each reading prompts with its
own repo's tokenizer, which alone is fetched (a local hub cache holding only tokenizer files,
offline). The run ends with the same reports as one on converted models, twice alike."""

import dataclasses
import json
import re

import pytest
from typer.testing import CliRunner

from amused_files import CODEBOOK, PROJECTION, UVIT
from clip_files import TEXT as CLIP_TEXT, write_tiny_clip
from clip_tokenizer_files import write_clip_tokenizer
from diffusers_vq_files import TINY_VQ
from gemma_tokenizer_files import write_gemma_tokenizer
from headless import rendered_images
from hubcache import add_to_hub_cache, go_offline
from janus_tokenizer_files import vocab_size as janus_vocab_size, write_janus_tokenizer
from mlx_imgen import families
from mlx_imgen.autoencoders import AUTOENCODERS
from mlx_imgen.autoencoders.diffusers_vq import DiffusersVQConfig
from mlx_imgen.autoencoders.vq import VQConfig
from mlx_imgen.cli.app import app
from mlx_imgen.families.amused import config_from_json as uvit_config
from mlx_imgen.families.janus import backbone_config
from mlx_imgen.registry import get_card
from mlx_imgen.text.clip import configs_from_hf
from test_sana_profile import TINY as TINY_SANA, TINY_DC_AE, TINY_GEMMA
from test_study_compare import Images
from uvit_files import tiny_config as tiny_uvit_config

runner = CliRunner()
MODELS = ("janus-pro-1b", "amused-256", "sana-0.6b-512")
SUITE = [{"id": "colors-1", "category": "colors", "prompt": "a red apple",
          "distractors": ["a green apple", "a blue apple"]},
         {"id": "position-1", "category": "position", "prompt": "a cup left of a book",
          "distractors": ["a cup right of a book"]}]


def tiny(monkeypatch, name, **changes):
    monkeypatch.setitem(families.FAMILIES, name,
                        dataclasses.replace(families.get(name), **changes))


def tiny_autoencoder(monkeypatch, kind, config):
    monkeypatch.setitem(AUTOENCODERS, kind, dataclasses.replace(AUTOENCODERS[kind],
                                                                config=lambda: config))


@pytest.fixture
def tiny_families(monkeypatch):
    janus = backbone_config(2, 32, 4, 64, text_vocab_size=janus_vocab_size(), vocab_size=64,
                            grid_size=4, context_length=None)
    tiny(monkeypatch, "janus", config_for=lambda size, image_size: janus)
    tiny_autoencoder(monkeypatch, "vq", VQConfig(codebook_size=64, codebook_embed_dim=8, ch=32,
                                                 ch_mult=(1, 2), z_channels=16,
                                                 num_res_blocks=1))
    clip_text, _ = configs_from_hf({"model_type": "clip_text_model", **CLIP_TEXT,
                                    "architectures": ["CLIPTextModelWithProjection"],
                                    "projection_dim": PROJECTION})
    uvit = uvit_config(tiny_uvit_config(**UVIT))
    tiny(monkeypatch, "amused", config_for=lambda size, image_size: uvit,
         text_encoder=("clip_text", clip_text))
    tiny_autoencoder(monkeypatch, "diffusers-vq", DiffusersVQConfig(
        block_out_channels=TINY_VQ["block_out_channels"], layers_per_block=1,
        latent_channels=4, norm_groups=4, num_vq_embeddings=CODEBOOK, vq_embed_dim=3))
    tiny(monkeypatch, "sana", config_for=lambda size, image_size: TINY_SANA,
         text_encoder=("gemma2", TINY_GEMMA))
    tiny_autoencoder(monkeypatch, "dc-ae", AUTOENCODERS["dc-ae"].config(**TINY_DC_AE))


@pytest.fixture
def tokenizers_only(tmp_path, monkeypatch):
    """A hub cache holding each alias's tokenizer files and nothing else; offline."""
    root = tmp_path / "repos"
    folders = {"janus-pro-1b": write_janus_tokenizer(root / "janus"),
               "amused-256": write_clip_tokenizer(root / "amused" / "tokenizer",
                                                  tokenizer_json=False),
               "sana-0.6b-512": write_gemma_tokenizer(root / "sana" / "tokenizer")}
    for alias, folder in folders.items():
        prefix = "" if alias.startswith("janus") else "tokenizer/"
        add_to_hub_cache(tmp_path / "hf", get_card(alias).transformer.repo,
                         {prefix + p.name: p for p in folder.iterdir() if p.is_file()})
    go_offline(monkeypatch, tmp_path / "hf" / "hub", tmp_path / "cache")


def test_random_weights_compare_runs_the_three_aliases(tiny_families, tokenizers_only,
                                                       tmp_path):
    write_tiny_clip(tmp_path / "clip-repo")
    write_clip_tokenizer(tmp_path / "clip-repo", tokenizer_json=False)
    result = runner.invoke(app, ["convert", str(tmp_path / "clip-repo"), "--out",
                                 str(tmp_path / "clip")])
    assert result.exit_code == 0, result.output
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps(p) + "\n" for p in SUITE))
    args = ["compare", *MODELS, "--random-weights", "--prompts", str(suite), "--out",
            str(tmp_path / "out"), "--scorer", str(tmp_path / "clip"), "--batch-size", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [m["model"] for m in results["models"]] == list(MODELS)
    assert all(m["random_weights"] for m in results["models"])
    assert {m["paradigm"] for m in results["models"]} == {"next-token", "masked-token",
                                                          "diffusion"}
    assert all(m["tokenizer"] == "model's" for m in results["models"])
    check_reports(tmp_path / "out", results, scored=True)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("images/*/*.png")}
    assert len(stamps) == len(MODELS) * len(SUITE)
    # the random weights come from the seed: a second run finds its images made alike
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_random_weights_take_aliases_only(tmp_path):
    result = runner.invoke(app, ["compare", str(tmp_path), "--random-weights", "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and "--random-weights takes model aliases" in result.output


def check_reports(out, results, *, scored):
    """The table, JSON and HTML page are whole: a table row per model with its cost, an image
    per (prompt, model) that exists, and every image drawn by a browser engine."""
    table = (out / "results.md").read_text()
    for m in results["models"]:
        assert m["flops_per_image"] > 0 and m["latency_s"] > 0 and m["images_per_s"] > 0
        assert m["peak_gb"] > 0 and m["suite_seconds"] > 0
        row = next(line for line in table.splitlines() if line.startswith(f"| {m['model']} "))
        assert len(row.split(" | ")) == 12 and re.search(r"\| \d[\d,.]* \|", row)
        assert (m["clip_score"] is not None) == scored
    assert len(results["images"]) == len(MODELS) * len(SUITE)
    assert all(isinstance(i["ranked_first"], bool) == scored for i in results["images"])
    assert len(results["findings"]) == 5
    page = Images()
    page.feed((out / "index.html").read_text())
    assert sorted(page.sources) == sorted(i["path"] for i in results["images"])
    assert all((out / src).is_file() for src in page.sources)
    count = len(MODELS) * len(SUITE)
    assert rendered_images(out / "index.html") == (count, count)


def test_stand_in_tokenizers_run_the_aliases_without_the_hub(tiny_families, tmp_path,
                                                             monkeypatch):
    """With no hub and nothing cached, --stand-in-tokenizers and --scorer none still give every
    model's cost, each prompt read one token a word; the images say so in their records, so a
    later run with the real tokenizers makes them anew."""
    go_offline(monkeypatch, tmp_path / "empty" / "hub", tmp_path / "cache")
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps(p) + "\n" for p in SUITE))
    out = tmp_path / "out"
    args = ["compare", *MODELS, "--random-weights", "--prompts", str(suite), "--out", str(out),
            "--batch-size", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "could not get" in result.output
    result = runner.invoke(app, args + ["--stand-in-tokenizers", "--scorer", "none"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert all(m["tokenizer"] == "stand-in" and m["batch"] == 1 for m in results["models"])
    check_reports(out, results, scored=False)
    table = (out / "results.md").read_text()
    assert "Stand-in tokenizers" in table and "Not scored" in table
    assert sorted(p.name for p in (out / "stand-in-tokenizers").iterdir()) == sorted(MODELS)


def test_stand_in_tokenizers_need_random_weights(tmp_path):
    result = runner.invoke(app, ["compare", "amused-256", "--stand-in-tokenizers", "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and "--stand-in-tokenizers goes with --random-weights" in \
        result.output
