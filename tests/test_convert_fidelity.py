"""Conversion fidelity: the weight set upstream samples from (EMA for DiT), upstream's own
configuration names, the key-and-shape pass before any tensor is read, and autoencoders that
convert alone and are stored once."""

import argparse
import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dit_files import save_vae, tiny_dit, tiny_vae
from llamagen_files import TINY_CONFIG, save_gpt, save_vq, tiny_gpt, tiny_vq
from mlx_imgen.cli.app import app
from mlx_imgen.convert import autoencoder_store, converter
from mlx_imgen.weights.keymap import KeyMismatchError
from mlx_imgen.weights.torch_pickle import LazyTensor
from mlx_imgen.pipeline import Pipeline
from mlx_imgen.registry import CARDS

runner = CliRunner()


# ---------------------------------------------------------------- DiT training checkpoints

def training_checkpoint(model, ema, path, **args):
    """What DiT's train.py saves: both weight sets, the optimizer and the argparse namespace."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), torch.tensor([1])).sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "args": argparse.Namespace(**args)}, path)
    return path


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-train")
    model, ema = tiny_dit(seed=0), tiny_dit(seed=5)
    # train.py's args less "model": the tiny network has no upstream size name
    path = training_checkpoint(model, ema, root / "0010000.pt", image_size=64, num_classes=10,
                               global_seed=0, epochs=1, results_dir="results", vae="ema")
    model.zero_grad()
    raw = root / "raw.pt"
    torch.save(ema.state_dict(), raw)
    vae = save_vae(tiny_vae(seed=3), root / "vae")
    return {"root": root, "model": model, "ema": ema, "file": path, "raw": raw, "vae": vae}


def convert_dit(dit, source, out, *extra, config='{"heads": 4}'):
    return runner.invoke(app, ["convert", str(source), "--out", str(out), "--config", config,
                               "--autoencoder", str(dit["vae"]), *extra])


def forward(folder, reference):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t, y = np.array([3.0, 700.0], np.float32), np.array([1, 10])
    out = Pipeline(folder).transformer(mx.array(x.transpose(0, 2, 3, 1)), mx.array(y), mx.array(t))
    with torch.no_grad():
        expected = reference(torch.tensor(x), torch.tensor(t), torch.tensor(y)).numpy()
    return np.array(out).transpose(0, 3, 1, 2), expected


def test_a_training_checkpoint_converts_its_ema_weights(dit, tmp_path):
    # the stored args give the image size: only the head count comes from --config
    result = convert_dit(dit, dit["file"], tmp_path / "ema")
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "ema" / "model_index.json").read_text())
    source = json.loads((tmp_path / "ema" / "transformer" / "config.json").read_text())["source"]
    assert index["weights"] == source["weights"] == source["entry"] == "ema"
    out, from_ema = forward(tmp_path / "ema", dit["ema"])
    np.testing.assert_allclose(out, from_ema, atol=1e-4, rtol=0)
    _, from_model = forward(tmp_path / "ema", dit["model"])
    assert np.abs(out - from_model).max() > 1e-2  # the two sets really differ


def test_weights_model_converts_the_trained_weights(dit, tmp_path):
    result = convert_dit(dit, dit["file"], tmp_path / "model", "--weights", "model")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["weights"] == "model"
    out, expected = forward(tmp_path / "model", dit["model"])
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_a_weight_set_the_file_does_not_hold_is_refused(dit, tmp_path):
    result = convert_dit(dit, dit["raw"], tmp_path / "o", "--weights", "ema",
                         config='{"heads": 4, "image_size": 64}')
    assert result.exit_code == 2
    assert "raw.pt is a single state dict with no named weight sets" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()
    result = convert_dit(dit, dit["file"], tmp_path / "o", "--weights", "best")
    assert result.exit_code == 2 and "choose ema or model" in result.output
    # without --weights the raw file converts, recorded as such
    result = convert_dit(dit, dit["raw"], tmp_path / "raw", config='{"heads": 4, "image_size": 64}')
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "raw" / "model_index.json").read_text())["weights"] == "raw"
    result = convert_dit(dit, dit["raw"], tmp_path / "o",
                         config='{"heads": 4, "image_size": 64, "num_classes": 1000}')
    assert result.exit_code == 2 and "asks for num_classes 1000 but the weights give 10" in \
        result.output


@pytest.mark.parametrize("config, message", [
    ('{"heads": 4, "image_size": 128}', "the checkpoint's stored training args give 64"),
    ('{"model": "DiT-L/2"}', "the configuration asks for depth 24"),
    ('{"heads": 4, "model": "DiT-XL/2"}', "disagree on heads (4 and 16)"),
    ('{"heads": 4, "num_classes": 1000}', "stored training args give 10"),
    ('{"heads": 4, "path_type": "GVP"}', "path_type 'GVP' is not supported"),
    ('{"heads": 4, "depht": 2}', "unknown key 'depht' for dit; accepted keys are"),
])
def test_dit_config_values_that_cannot_be_honoured_are_refused(dit, tmp_path, config, message):
    result = convert_dit(dit, dit["file"], tmp_path / "o", config=config)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- LlamaGen: upstream names

@pytest.fixture(scope="module")
def llamagen(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamagen-config")
    return {"root": root, "gpt": save_gpt(tiny_gpt(), root / "gpt.pt"),
            "vq": save_vq(tiny_vq(), root / "vq_ds16_c2i.pt")}


def convert_gpt(files, config, out, *extra):
    return runner.invoke(app, ["convert", str(files["gpt"]), "--family", "llamagen", "--config",
                               config, "--autoencoder", str(files["vq"]), "--out", str(out),
                               *extra])


UPSTREAM_ARGS = dict(dim=64, n_layer=2, n_head=4, n_kv_head=None, vocab_size=32, block_size=16,
                     cls_token_num=1, num_classes=10, multiple_of=32, ffn_dim_multiplier=None,
                     norm_eps=1e-5, rope_base=10000, model_type="c2i", token_dropout_p=0.1,
                     class_dropout_prob=0.1, max_seq_len=2048)


def test_llamagen_model_args_configure_the_same_backbone(llamagen, tmp_path):
    result = convert_gpt(llamagen, json.dumps(UPSTREAM_ARGS), tmp_path / "upstream")
    assert result.exit_code == 0, result.output
    result = convert_gpt(llamagen, TINY_CONFIG, tmp_path / "ours")
    assert result.exit_code == 0, result.output
    assert Pipeline(tmp_path / "upstream").config == Pipeline(tmp_path / "ours").config


@pytest.mark.parametrize("change, message", [
    ({"n_layer": 3}, "asks for depth 3 but the weights give 2"),
    ({"dim": 96}, "asks for width 96"),
    ({"block_size": 15}, "block_size 15 is not a square number"),
    ({"n_kv_head": 2}, "grouped-query attention is not supported"),
    ({"multiple_of": 256}, "make an MLP 256 wide, but the weights' is 192"),
    ({"model_type": "t2i"}, "only class-to-image (c2i) models convert"),
    ({"image_size": 128}, "128 px does not fit this model's 4x4 grid of 16 px cells"),
    ({"n_layers": 2}, "unknown key 'n_layers' for llamagen; accepted keys are"),
])
def test_llamagen_values_that_cannot_be_honoured_are_refused(llamagen, tmp_path, change, message):
    result = convert_gpt(llamagen, json.dumps({**UPSTREAM_ARGS, **change}), tmp_path / "o")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_an_image_size_the_token_grid_does_not_divide_is_refused_not_rounded(llamagen, tmp_path):
    result = convert_gpt(llamagen, '{"heads": 4, "image_size": 72}', tmp_path / "o")
    assert result.exit_code == 2 and "72 px is not a multiple of the tokenizer's 16" in result.output


# ---------------------------------------------------------------- the key-and-shape pass

def test_a_wrong_shape_fails_before_any_tensor_is_read(tmp_path, monkeypatch):
    state = tiny_gpt().state_dict()
    state["layers.1.attention.wo.weight"] = torch.zeros(64, 48)
    torch.save({"model": state}, tmp_path / "wrong.pt")
    reads = []

    def refuse(self, *args, **kwargs):
        reads.append(self)
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(LazyTensor, "numpy", refuse)
    monkeypatch.setattr(LazyTensor, "to_mlx", refuse)
    with pytest.raises(KeyMismatchError, match=r"wrong shape \(1\): "
                       r"blocks\.1\.attn\.out\.weight: \(64, 48\) in the wrong\.pt"):
        converter.convert(str(tmp_path / "wrong.pt"), tmp_path / "o", family="llamagen",
                          config=TINY_CONFIG, autoencoder=str(tmp_path / "unused.pt"))
    assert reads == [] and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- autoencoders

def test_pipelines_share_one_stored_autoencoder(llamagen, tmp_path, monkeypatch):
    read = []
    original = autoencoder_store.read_state_dict
    monkeypatch.setattr(autoencoder_store, "read_state_dict",
                        lambda path, *a, **k: read.append(path) or original(path, *a, **k))
    for name in ("first", "second"):
        result = convert_gpt(llamagen, TINY_CONFIG, tmp_path / name)
        assert result.exit_code == 0, result.output
    weights = [tmp_path / name / "autoencoder" / "model.safetensors" for name in ("first", "second")]
    assert weights[0].stat().st_ino == weights[1].stat().st_ino
    assert weights[0].stat().st_nlink >= 3  # the store's copy and the two folders
    assert len(read) <= 1  # converted once (zero times if an earlier test stored it)
    record = json.loads((tmp_path / "second" / "autoencoder" / "config.json").read_text())
    assert record["store"]["files"] == "hard link"
    assert record["source"]["file"] == "vq_ds16_c2i.pt"
    for name in ("first", "second"):
        images = Pipeline(tmp_path / name).generate([1, 2], seed=0, top_k=0)
        assert len(images) == 2


def test_a_tokenizer_converts_alone_by_name_or_by_keys(llamagen, tmp_path):
    renamed = tmp_path / "my_tokenizer.pt"
    renamed.write_bytes(llamagen["vq"].read_bytes())
    for source, out in [(llamagen["vq"], tmp_path / "vq"), (renamed, tmp_path / "vq2")]:
        result = runner.invoke(app, ["convert", str(source), "--out", str(out)])
        assert result.exit_code == 0, result.output
        index = json.loads((out / autoencoder_store.AUTOENCODER_INDEX).read_text())
        assert index["kind"] == "vq" and not (out / "model_index.json").exists()
    result = runner.invoke(app, ["convert", str(llamagen["gpt"]), "--family", "llamagen",
                                 "--config", TINY_CONFIG, "--autoencoder", str(tmp_path / "vq"),
                                 "--out", str(tmp_path / "pipe")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pipe" / "autoencoder" / "model.safetensors").stat().st_ino == \
        (tmp_path / "vq" / "model.safetensors").stat().st_ino
    assert len(Pipeline(tmp_path / "pipe").generate([3], seed=1, top_k=0)) == 1


def test_a_vae_folder_converts_alone_and_a_kl_folder_is_refused_for_a_vq_family(llamagen, dit,
                                                                                tmp_path):
    result = runner.invoke(app, ["convert", str(dit["vae"]), "--out", str(tmp_path / "vae")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["kind"] == "kl"
    result = convert_dit(dit, dit["file"], tmp_path / "dit", "--autoencoder", str(tmp_path / "vae"))
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["convert", str(llamagen["gpt"]), "--family", "llamagen",
                                 "--config", TINY_CONFIG, "--autoencoder", str(tmp_path / "vae"),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "decodes with a vq one" in result.output


def test_unconfirmed_maskgit_aliases_are_marked(monkeypatch):
    from mlx_imgen.cli import models as models_command

    # rich reads the terminal width once, when the console is made: widen it for this table
    monkeypatch.setattr(models_command.console, "width", 250)
    maskgit = {alias: card for alias, card in CARDS.items() if card.family == "maskgit"}
    assert maskgit["maskgit-halton-l-384"].confirmed
    assert not any(card.confirmed for alias, card in maskgit.items()
                   if alias != "maskgit-halton-l-384")
    result = runner.invoke(app, ["models"])
    lines = {line.split()[1]: line for line in result.output.splitlines()
             if line.startswith("│ maskgit")}
    assert "(unconfirmed)" in lines["maskgit-halton-t-256"]
    assert "(unconfirmed)" not in lines["maskgit-halton-l-384"]


def test_a_store_entry_written_meanwhile_by_another_process_wins(llamagen, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_IMGEN_CACHE", str(tmp_path / "cache"))
    root = autoencoder_store.store_root()
    stale = root / ".partial-999999999-x"  # a killed conversion's (no such process)
    stale.mkdir(parents=True)
    real_rename = autoencoder_store.os.rename

    def racing_rename(src, dst):
        # the other process finishes first: its entry is in place when ours is renamed
        if Path(dst).parent == root:
            shutil.copytree(src, dst)
            (Path(dst) / "winner").write_text("")
        real_rename(src, dst)

    monkeypatch.setattr(autoencoder_store.os, "rename", racing_rename)
    result = convert_gpt(llamagen, TINY_CONFIG, tmp_path / "pipe")
    assert result.exit_code == 0, result.output
    [entry] = [p for p in root.iterdir()]  # the stale and our temporary entries are gone
    assert (entry / "winner").exists() and not stale.exists()
    assert (tmp_path / "pipe" / "autoencoder" / "model.safetensors").stat().st_ino == \
        (entry / "model.safetensors").stat().st_ino


def test_an_autoencoder_folder_is_replaced_only_with_force(llamagen, tmp_path):
    out = tmp_path / "vq"
    assert runner.invoke(app, ["convert", str(llamagen["vq"]), "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["convert", str(llamagen["vq"]), "--out", str(out)])
    assert result.exit_code == 2 and "already exists; pass --force" in result.output
    result = runner.invoke(app, ["convert", str(llamagen["vq"]), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vq"]  # no temporary or old folder
    result = runner.invoke(app, ["convert", str(llamagen["vq"]), "--out", str(tmp_path / "o"),
                                 "--weights", "ema"])
    assert result.exit_code == 2 and "--weights picks the weight set" in result.output


@pytest.mark.parametrize("config, message", [
    ('{"heads": "4", "image_size": 64}', "heads must be a whole number"),
    ('{"heads": 4, "image_size": 16000000}', "larger than the largest supported, 4096"),
    ('{"n_head": 4, "block_size": 1000000000000}', "larger than the largest supported, 256x256"),
    ('{"heads": 4, "image_size": 64, "norm_eps": -1}', "norm_eps must be positive"),
])
def test_config_values_of_the_wrong_type_or_range_are_refused(llamagen, tmp_path, config, message):
    result = convert_gpt(llamagen, config, tmp_path / "o")
    assert result.exit_code == 2 and message in result.output, result.output


def test_across_filesystems_the_stored_weights_are_copied_and_the_record_says_so(
        llamagen, tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(autoencoder_store.os, "link", no_link)
    result = convert_gpt(llamagen, TINY_CONFIG, tmp_path / "pipe")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "pipe" / "autoencoder" / "config.json").read_text())
    assert record["store"]["files"] == "copy"
    stored = autoencoder_store.store_root() / record["store"]["key"] / "model.safetensors"
    copied = tmp_path / "pipe" / "autoencoder" / "model.safetensors"
    assert copied.stat().st_ino != stored.stat().st_ino
    assert copied.read_bytes() == stored.read_bytes()
