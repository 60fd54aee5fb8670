"""Janus-Pro conversion: the VQ-16 tokenizer out of either checkpoint layout (decode parity with
transformers' JanusVQVAE), whole-repo conversion from a local hub cache in both layouts, the
left-out record, quantized conversion, and the bad inputs."""

import numpy as np
import pytest
from conftest import assert_refused
import torch
import mlx.core as mx
from transformers.models.janus.configuration_janus import JanusVQVAEConfig
from transformers.models.janus.modeling_janus import JanusVQVAE

from llamagen_files import draw_vq_weights
from mlx_imgen.autoencoders.janus_vq import llamagen_name, vq_state
from mlx_imgen.families.janus import TEXT_HEAD, UNDERSTANDING, VQ_PREFIXES
from mlx_imgen.autoencoders.vq import VQModel, infer_vq_config, vq_weights_from_upstream
from mlx_imgen.weights.keymap import load_checked

TINY_VQ = dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
               channel_multiplier=[1, 2], num_res_blocks=1, num_patches=4, projection_dim=32,
               image_token_embed_dim=32)


def tiny_reference_vq(seed: int = 0) -> JanusVQVAE:
    """transformers' JanusVQVAE, tiny, every parameter drawn (norm affines and biases too)."""
    torch.manual_seed(seed)
    return draw_vq_weights(JanusVQVAE(JanusVQVAEConfig(**TINY_VQ)).eval())


def as_original_names(transformers_vq: dict) -> dict:
    """The same tensors under LlamaGen's names, as deepseek-ai's gen_vision_model.* holds them
    (its VQ is LlamaGen's module for module), plus the usage buffer upstream also saves."""
    state = {f"gen_vision_model.{llamagen_name(k)}": v for k, v in transformers_vq.items()}
    state["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)
    return state


def mlx_vq(state: dict, layout: str) -> VQModel:
    upstream = {k: v.numpy() for k, v in vq_state(state, VQ_PREFIXES[layout]).items()}
    model = VQModel(infer_vq_config(upstream))
    load_checked(model, vq_weights_from_upstream(upstream))
    return model


@pytest.fixture(scope="module")
def reference_vq():
    return tiny_reference_vq()


def test_vq_decode_matches_transformers_in_both_layouts(reference_vq):
    weights = reference_vq.state_dict()
    transformers_state = {f"model.vqmodel.{k}": v for k, v in weights.items()}
    codes = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference_vq.decode(codes).permute(0, 2, 3, 1).numpy()
    grid = mx.array(codes.numpy().astype(np.int32).reshape(2, 4, 4))
    for state, layout in ((transformers_state, "transformers"),
                          (as_original_names(weights), "original")):
        out = np.array(mlx_vq(state, layout).decode_codes(grid))
        assert out.shape == expected.shape == (2, 8, 8, 3)
        np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0, err_msg=layout)
        assert np.abs(expected).max() > 0.1  # the decode is not flat


def test_transformers_vq_names_map_onto_llamagen_modules():
    cases = {"decoder.up.0.block.2.conv1.weight": "decoder.conv_blocks.0.res.2.conv1.weight",
             "encoder.down.3.downsample.conv.bias": "encoder.conv_blocks.3.downsample.conv.bias",
             "decoder.up.0.attn.1.proj_out.weight": "decoder.conv_blocks.0.attn.1.proj_out.weight"}
    for name, expected in cases.items():
        assert llamagen_name(name) == expected
    assert llamagen_name("encoder.mid.attn_1.q.weight") == "encoder.mid.1.q.weight"
    assert llamagen_name("quantize.embedding.weight") == "quantize.embedding.weight"


def test_a_checkpoint_without_the_tokenizer_is_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"no image tokenizer \(no gen_vision_model\.\* keys\)"):
        vq_state({"language_model.model.embed_tokens.weight": np.zeros((4, 2))},
                 "gen_vision_model.")


# ---------------------------------------------------------------- whole-repo conversion

import json  # noqa: E402  (the conversion half of the file)

from typer.testing import CliRunner  # noqa: E402

from hubcache import add_to_hub_cache, go_offline  # noqa: E402
from janus_files import write_tiny_janus  # noqa: E402
from janus_tokenizer_files import write_janus_tokenizer  # noqa: E402
from mlx_imgen.cli.app import app  # noqa: E402
from mlx_imgen.pipeline import Pipeline  # noqa: E402
from mlx_imgen.weights.shards import load_weights  # noqa: E402

runner = CliRunner()
# the three forms the hub holds: deepseek-ai's 1B (one bf16 .bin), its 7B (.bin shards with an
# index), the transformers port (safetensors); the tiny model of one seed in each
REPOS = {
    "original-bin-bf16": "deepseek-ai/Janus-Pro-1B",
    "original-shards": "deepseek-ai/Janus-Pro-7B",
    "transformers": "deepseek-community/Janus-Pro-1B",
}


def _repo(folder, form: str):
    if form == "original-bin-bf16":
        write_tiny_janus(folder, layout="original", dtype=torch.bfloat16)
    elif form == "original-shards":
        write_tiny_janus(folder, layout="original", shards=2)
    else:
        write_tiny_janus(folder, layout="transformers")
    write_janus_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("janus")
    folders = {form: _repo(root / form, form) for form in REPOS}
    for form, repo in REPOS.items():
        add_to_hub_cache(root / "hf", repo, {p.name: p for p in folders[form].iterdir()
                                             if p.is_file()})
    return {"root": root, "folders": folders}


@pytest.fixture
def offline(hub, tmp_path, monkeypatch):
    """The hub is offline and holds only the tiny repos; conversions go to a fresh cache."""
    return go_offline(monkeypatch, hub["root"] / "hf" / "hub", tmp_path / "cache")


def convert(source: str, out, *extra) -> dict:
    result = runner.invoke(app, ["convert", source, "--out", str(out), "--dtype", "float32",
                                 *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "model_index.json").read_text())


def test_every_hub_form_converts_to_the_same_pipeline(hub, offline, tmp_path):
    """bf16 storages cast exactly to float32, so the bf16 repo's pipeline equals the float32
    repos' once those are rounded to bfloat16 the same way."""
    outs = {form: tmp_path / form for form in REPOS}
    indexes = {form: convert(repo, outs[form]) for form, repo in REPOS.items()}
    weights = {form: load_weights(out / "transformer") for form, out in outs.items()}
    vqs = {form: load_weights(out / "autoencoder") for form, out in outs.items()}
    assert set(weights["transformers"]) == set(weights["original-shards"]) == \
        set(weights["original-bin-bf16"])
    for key, value in weights["transformers"].items():
        assert mx.array_equal(value, weights["original-shards"][key]), key
        rounded = value.astype(mx.bfloat16).astype(mx.float32)
        assert mx.array_equal(rounded, weights["original-bin-bf16"][key]), key
    for key, value in vqs["transformers"].items():
        assert mx.array_equal(value, vqs["original-shards"][key]), key
    configs = {f: json.loads((o / "transformer" / "config.json").read_text())["backbone"]
               for f, o in outs.items()}
    assert configs["transformers"] == configs["original-shards"] == configs["original-bin-bf16"]
    for form, index in indexes.items():
        assert index["family"] == "janus" and index["condition"] == "text"
        assert index["sampling"] and index["paradigm"] == "next-token"
        assert sorted(p.name for p in (outs[form] / "tokenizer").iterdir()) == \
            ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    # the aliases' repos carry their card: license and alias recorded
    assert indexes["original-bin-bf16"]["alias"] == "janus-pro-1b"
    assert "DeepSeek Model License" in indexes["original-bin-bf16"]["license"]
    source = json.loads((outs["original-shards"] / "transformer" / "config.json").read_text())
    assert [f["file"] for f in source["source"]["files"]] == [
        "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin"]
    assert all(len(f["sha256"]) == 64 for f in source["source"]["files"])


def test_the_left_out_parts_are_recorded_and_shown(hub, offline, tmp_path):
    index = convert(REPOS["transformers"], tmp_path / "t")
    parts = {p["part"]: p for p in index["left_out"]}
    assert set(parts) == {UNDERSTANDING, TEXT_HEAD}
    assert parts[TEXT_HEAD] == {"part": TEXT_HEAD, "tensors": 1, "parameters": 1024 * 64}
    assert parts[UNDERSTANDING]["tensors"] > 10
    original = convert(str(hub["folders"]["original-shards"]), tmp_path / "o")
    assert [(p["part"], p["tensors"], p["parameters"]) for p in original["left_out"]] == \
        [(p["part"], p["tensors"], p["parameters"]) for p in index["left_out"]]
    result = runner.invoke(app, ["info", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "left out" in text and "understanding" in text and "(1 tensors, 0.1M" in text
    assert "tokenizer.json" in text and "text" in text


def test_the_pipeline_decodes_codes_as_transformers(hub, offline, tmp_path):
    """The converted folder's autoencoder is the checkpoint's own VQ: its decode of a code grid
    equals transformers' JanusVQVAE.decode of the same codes."""
    from janus_files import tiny_janus

    convert(REPOS["original-shards"], tmp_path / "p")
    pipe = Pipeline(tmp_path / "p")
    reference = tiny_janus().model.vqmodel
    codes = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference.decode(codes).permute(0, 2, 3, 1).numpy()
    out = np.array(pipe.autoencoder.decode_codes(mx.array(codes.numpy().astype(np.int32)
                                                          .reshape(2, 4, 4))))
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_quantized_conversion_and_info(hub, offline, tmp_path):
    index = convert(REPOS["transformers"], tmp_path / "q", "--quantize", "8", "--group-size",
                    "32")
    assert index["quantization"]["bits"] == 8
    modules = index["quantization"]["modules"]
    assert any("blocks.0" in m for m in modules)
    result = runner.invoke(app, ["info", str(tmp_path / "q")])
    assert result.exit_code == 0 and "8-bit, group size 32" in result.output
    # a float folder requantizes into one that keeps its tokenizer
    convert(REPOS["transformers"], tmp_path / "f")
    again = convert(str(tmp_path / "f"), tmp_path / "q4", "--quantize", "4", "--group-size", "32")
    assert again["quantization"]["bits"] == 4
    assert (tmp_path / "q4" / "tokenizer" / "tokenizer.json").is_file()


def table_rows(output: str) -> dict[str, str]:
    """Each row of the printed tables by its alias, its wrapped cells' lines joined."""
    rows, alias = {}, None
    for line in output.splitlines():
        if line.startswith("│ ") and line[2] != " ":
            alias = line.split()[1]
            rows[alias] = line
        elif line.startswith("│") and alias:
            rows[alias] += " " + line
        else:
            alias = None
    return {a: " ".join(r.replace("│", " ").split()) for a, r in rows.items()}


def test_models_lists_the_janus_aliases_with_text_conditioning():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    lines = {alias: row for alias, row in table_rows(result.output).items()
             if alias.startswith("janus")}
    assert set(lines) == {"janus-pro-1b", "janus-pro-7b"}
    assert "0.73" in lines["janus-pro-1b"] and "82.63" in lines["janus-pro-1b"]
    assert "0.80" in lines["janus-pro-7b"] and "84.19" in lines["janus-pro-7b"]
    text = " ".join(result.output.split())
    assert "text-to-image models (condition: text prompts; scores as published)" in text
    assert "GenEval" in text and "DPG-Bench" in text


def _bad_cases(hub, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for p in hub["folders"]["original-shards"].iterdir():
        if p.name != "pytorch_model-00002-of-00002.bin":
            (shards / p.name).write_bytes(p.read_bytes())
    llamagen = tmp_path / "c2i.safetensors"
    mx.save_safetensors(str(llamagen), {"tok_embeddings.weight": mx.zeros((4, 8))})
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for p in hub["folders"]["transformers"].iterdir():
        if not p.name.startswith(("tokenizer", "special")):
            (no_tokenizer / p.name).write_bytes(p.read_bytes())
    return {
        "missing shard": ([str(shards)], "lacks the shard pytorch_model-00002-of-00002.bin"),
        "wrong layout under --family janus": ([str(llamagen), "--family", "janus"],
                                              "is not a Janus-Pro checkpoint"),
        "no tokenizer": ([str(no_tokenizer)], "has no tokenizer.json"),
        "another family's alias": (["llamagen-c2i-b-256", "--family", "janus"],
                                   "is a llamagen model"),
        "an autoencoder for janus": ([REPOS["transformers"], "--autoencoder", "x.pt"],
                                     "leave out --autoencoder"),
        "another family for a janus repo": ([REPOS["transformers"], "--family", "llamagen"],
                                            "is a Janus-Pro model, not llamagen"),
        "a damaged index": ([str(_damaged_index(hub, tmp_path))], "is damaged"),
    }


def _damaged_index(hub, tmp_path):
    folder = tmp_path / "damaged"
    folder.mkdir()
    for p in hub["folders"]["original-shards"].iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "pytorch_model.bin.index.json").write_text('{"weight_map": {"a": "../x.bin"}}')
    return folder


BAD = ["missing shard", "wrong layout under --family janus", "no tokenizer",
       "another family's alias", "an autoencoder for janus", "another family for a janus repo",
       "a damaged index"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_sentence_exit_2_nothing_written(hub, offline, tmp_path, case):
    args, phrase = _bad_cases(hub, tmp_path)[case]
    out = tmp_path / "out"
    assert_refused(runner.invoke(app, ["convert", *args, "--out", str(out)]), phrase)
    assert not out.exists()
    assert not offline.exists() or not any(offline.rglob("*.safetensors"))


def test_offline_without_the_files_fails_at_once_naming_the_download(tmp_path, monkeypatch):
    go_offline(monkeypatch, tmp_path / "empty-hub", tmp_path / "cache")
    for source in ("janus-pro-7b", "deepseek-community/Janus-Pro-1B"):
        result = runner.invoke(app, ["convert", source, "--out", str(tmp_path / "x")])
        message = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "offline mode is on" in message and "mlx-imgen convert ./" in message
        assert not (tmp_path / "x").exists() and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------- FLOPs, memory and profile

def _tiny_backbone(hub, offline, tmp_path):
    convert(REPOS["transformers"], tmp_path / "p")
    return tmp_path / "p", Pipeline(tmp_path / "p").config


def test_flops_count_the_prompt_prefill_the_aligner_and_the_head_mlp(hub, offline, tmp_path):
    """Written out: each block's matmuls per position; the code aligner (8 -> d -> d) on every
    image token fed back; the head MLP (d -> d -> codes) at the prompt's last position and at
    every fed-back token; attention over the prompt plus the tokens so far; CFG doubles it."""
    from mlx_imgen.flops import plan_flops
    from mlx_imgen.paradigms import NextTokenPlan

    _, cfg = _tiny_backbone(hub, offline, tmp_path)
    w, f, e, codes, depth = cfg.width, cfg.hidden, cfg.token_embed_dim, cfg.vocab_size, cfg.depth
    inner = cfg.heads * cfg.dims_per_head
    block = 2 * (3 * w * inner + inner * w + 3 * w * f)
    aligner, head = 2 * (e * w + w * w), 2 * (w * cfg.head_hidden + cfg.head_hidden * codes)
    prompt, tokens = 7, 5
    linear = depth * block * prompt + head            # prefill: the head at the last position
    attention = depth * 4 * prompt * prompt * inner
    for i in range(1, tokens):                        # token i - 1 fed back, sees prompt + i
        linear += depth * block + aligner + head
        attention += depth * 4 * (prompt + i) * inner
    flops = plan_flops(cfg, NextTokenPlan(num_tokens=tokens, cfg_scale=5.0), prompt)
    assert flops.linear == pytest.approx(2 * linear)
    assert flops.attention == pytest.approx(2 * attention)


def test_memory_counts_the_text_embedding_head_mlp_and_prompt_cache(hub, offline, tmp_path):
    from mlx.utils import tree_flatten

    from mlx_imgen.memory import TEXT_PREFIX_TOKENS, sampling_bytes, transformer_parameters
    from mlx_imgen.backbone import Transformer

    _, cfg = _tiny_backbone(hub, offline, tmp_path)
    model = Transformer(cfg)
    matrices = sum(v.size for k, v in tree_flatten(model.parameters()) if v.ndim == 2)
    # the estimate counts matrices and a position table (none here), not norms or biases
    assert transformer_parameters(cfg) - cfg.num_tokens * cfg.width == \
        matrices + cfg.token_embed_dim  # and one spare code row
    cache = sampling_bytes(cfg, "next-token", 1, 4, prompt_tokens=10)
    longer = sampling_bytes(cfg, "next-token", 1, 4, prompt_tokens=110)
    assert longer - cache == 2 * cfg.depth * 2 * 100 * cfg.width * 4
    assert sampling_bytes(cfg, "next-token", 1, 4) == \
        sampling_bytes(cfg, "next-token", 1, 4, prompt_tokens=TEXT_PREFIX_TOKENS)


def test_profile_reports_prefill_and_time_per_token_of_a_converted_folder(hub, offline,
                                                                           tmp_path):
    from mlx_imgen.profiling import PROFILE_PROMPT_TOKENS
    from mlx_imgen.flops import plan_flops

    folder, cfg = _tiny_backbone(hub, offline, tmp_path)
    out = tmp_path / "profile.json"
    result = runner.invoke(app, ["profile", str(folder), "--batch-sizes", "1,2", "--trials", "1",
                                 "--step-budget", "0", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    assert [r["batch_size"] for r in rows] == [1, 2]
    pipe = Pipeline(folder)
    plan, _ = pipe.plan()
    expected = plan_flops(cfg, plan, PROFILE_PROMPT_TOKENS).total + pipe.decode_flops_per_image()
    for r in rows:
        assert r["status"] == "ok" and r["prompt_tokens"] == PROFILE_PROMPT_TOKENS
        assert r["gflops_per_image"] == pytest.approx(expected / 1e9)
        assert r["stages_s"]["prefill"] > 0 and r["stages_s"]["per_token_decode"] > 0
        assert r["measured_steps"] == cfg.num_tokens and not r["extrapolated"]
