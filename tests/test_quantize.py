import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from PIL import Image
from typer.testing import CliRunner

from llamagen_files import TINY_CONFIG, save_gpt, save_vq, tiny_gpt, tiny_vq
from mlx_imgen.cli.app import app
from mlx_imgen.weights.shards import INDEX_FILE, load_weights, save_weights
from mlx_imgen.pipeline import Pipeline
from mlx_imgen.convert.converter import convert
from mlx_imgen.convert.quantize_check import check_quantization
from mlx_imgen.quantize import fixed_inputs, weight_bytes
from upstream import llamagen_gpt

runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    gpt, vq = save_gpt(tiny_gpt(), root / "gpt.pt"), save_vq(tiny_vq(), root / "vq.pt")
    common = ["--family", "llamagen", "--config", TINY_CONFIG, "--autoencoder", str(vq)]
    for name, extra in (("float", []), ("q8", ["--quantize", "8", "--group-size", "32"])):
        result = runner.invoke(app, ["convert", str(gpt), *common, "--out", str(root / name), *extra])
        assert result.exit_code == 0, result.output
    return {"root": root, "gpt": gpt, "common": common}


def test_quantized_folder_reloads_bit_identical_to_in_memory_quantization(folders):
    reloaded = Pipeline(folders["root"] / "q8")
    in_memory = Pipeline(folders["root"] / "float")
    in_memory.quantize(8, 32)
    a = dict(tree_flatten(reloaded.transformer.parameters()))
    b = dict(tree_flatten(in_memory.transformer.parameters()))
    assert a.keys() == b.keys() and any(k.endswith(".scales") for k in a)
    for key in a:
        np.testing.assert_array_equal(np.array(a[key]), np.array(b[key]), err_msg=key)
    inputs = fixed_inputs(reloaded.transformer)
    np.testing.assert_array_equal(np.array(reloaded.transformer(*inputs)),
                                  np.array(in_memory.transformer(*inputs)))


def test_config_records_bits_group_size_and_quantized_modules(folders):
    config = json.loads((folders["root"] / "q8" / "transformer" / "config.json").read_text())
    q = config["quantization"]
    assert q["bits"] == 8 and q["group_size"] == 32 and q["mode"] == "affine"
    assert "blocks.0.attn.qkv" in q["modules"] and "head" in q["modules"]
    assert "token_embed" in q["modules"]
    index = json.loads((folders["root"] / "q8" / "model_index.json").read_text())
    assert index["quantization"] == q
    ae = json.loads((folders["root"] / "q8" / "autoencoder" / "config.json").read_text())
    assert ae["quantization"] is None and ae["dtype"] == "float32"


def test_float_folder_quantizes_into_a_new_folder(folders, tmp_path):
    result = runner.invoke(app, ["convert", str(folders["root"] / "float"), "--quantize", "4",
                                 "--group-size", "32", "--out", str(tmp_path / "q4")])
    assert result.exit_code == 0, result.output
    assert Pipeline(tmp_path / "q4").index["quantization"]["bits"] == 4


def _assert_same_parameters(a, b):
    a, b = dict(tree_flatten(a.parameters())), dict(tree_flatten(b.parameters()))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(np.array(a[key]), np.array(b[key]), err_msg=key)


def test_quantized_conversion_never_holds_the_float_and_quantized_models_at_once(tmp_path):
    # 6.2M parameters, 25 MB in float32: large enough that one tensor (2 MB) is a small share
    args = llamagen_gpt.GPTArgs(dim=256, n_layer=6, n_head=4, vocab_size=2048, num_classes=10,
                                block_size=16, multiple_of=64)
    model = llamagen_gpt.randomize_(llamagen_gpt.GPT(args), 0).eval()
    gpt, vq = save_gpt(model, tmp_path / "gpt.pt"), save_vq(tiny_vq(), tmp_path / "vq.pt")
    common = dict(family="llamagen", config=TINY_CONFIG, autoencoder=str(vq), dtype="float32")
    convert(str(gpt), tmp_path / "float", **common)
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    convert(str(gpt), tmp_path / "q4", quantize=4, group_size=64, **common)
    peak = mx.get_peak_memory() - before
    quantized, in_memory = Pipeline(tmp_path / "q4"), Pipeline(tmp_path / "float")
    float_bytes = weight_bytes(in_memory.transformer)
    in_memory.quantize(4, 64)
    quantized_bytes = weight_bytes(quantized.transformer)
    # measured: peak 9.1 MB (a 2 MB float tensor, the 3.7 MB quantized weights, the 2.9 MB VQ)
    # for 23.5 MB of float weights; holding the float model as well made it 27 MB + the VQ
    assert peak < 0.5 * float_bytes < float_bytes + quantized_bytes, (peak, float_bytes)
    _assert_same_parameters(quantized.transformer, in_memory.transformer)


def test_float_conversion_writes_the_eager_weights_cast_to_the_dtype(tmp_path):
    from mlx_imgen import families
    from mlx_imgen.weights.readers import read_state_dict

    gpt, vq = save_gpt(tiny_gpt(), tmp_path / "gpt.pt"), save_vq(tiny_vq(), tmp_path / "vq.pt")
    convert(str(gpt), tmp_path / "f16", family="llamagen", config=TINY_CONFIG,
            autoencoder=str(vq), dtype="float16")
    eager = families.get("llamagen").weights_from_upstream(read_state_dict(gpt))
    streamed = load_weights(tmp_path / "f16" / "transformer")
    assert streamed.keys() == eager.keys()
    for key, value in eager.items():
        assert streamed[key].dtype == mx.float16
        np.testing.assert_array_equal(np.array(streamed[key]),
                                      np.array(value.astype(mx.float16)), err_msg=key)


def test_sharded_weights_round_trip(tmp_path):
    weights = {f"layer{i}.weight": mx.random.normal((32, 32)) for i in range(5)}
    names = save_weights(tmp_path, weights, {"format": "mlx"}, max_shard_bytes=3 * 32 * 32 * 4)
    assert len(names) == 2 and (tmp_path / INDEX_FILE).is_file()
    loaded = load_weights(tmp_path)
    assert loaded.keys() == weights.keys()
    for key in weights:
        np.testing.assert_array_equal(np.array(loaded[key]), np.array(weights[key]))


def test_sharded_pipeline_folder_loads(folders, tmp_path, monkeypatch):
    from mlx_imgen.convert import writer

    monkeypatch.setattr(writer, "MAX_SHARD_BYTES", 40_000)
    monkeypatch.setattr(writer.write_pipeline, "__defaults__", (False, 40_000))
    result = runner.invoke(app, ["convert", str(folders["gpt"]), *folders["common"],
                                 "--out", str(tmp_path / "sharded")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sharded" / "transformer" / INDEX_FILE).is_file()
    sharded, single = Pipeline(tmp_path / "sharded"), Pipeline(folders["root"] / "float")
    inputs = fixed_inputs(single.transformer)
    np.testing.assert_array_equal(np.array(sharded.transformer(*inputs)),
                                  np.array(single.transformer(*inputs)))


def test_info_check_reports_small_8bit_error(folders):
    rows = {r["bits"]: r for r in check_quantization(folders["root"] / "float", [8, 4], 32)}
    # stated bounds for 8-bit on this tiny random model (measured: 0.97 and 7e-4)
    assert rows[8]["top-1 agreement"] >= 0.9 and rows[8]["mean KL"] < 5e-3
    assert rows[4]["mean KL"] > rows[8]["mean KL"]
    assert rows[8]["share of float weights"] < 0.35 and rows[4]["share of float weights"] < 0.2
    result = runner.invoke(app, ["info", str(folders["root"] / "float"), "--check",
                                 "--bits", "8", "--group-size", "32"])
    assert result.exit_code == 0 and "KL" in result.output


def test_generate_quantizes_on_the_fly(folders, tmp_path):
    out = tmp_path / "q.png"
    result = runner.invoke(app, ["generate", str(folders["root"] / "float"), "--class", "1",
                                 "--quantize", "8", "--group-size", "32", "--low-memory",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).text["quantization"] == "8-bit"


@pytest.mark.parametrize("args, words", [
    (["--quantize", "7"], "not supported"),
    (["--quantize", "4", "--group-size", "48"], "not supported"),
    (["--quantize", "4", "--group-size", "128"], "does not divide the width 64"),
])
def test_bad_quantization_settings_are_refused_and_nothing_is_written(folders, tmp_path, args, words):
    result = runner.invoke(app, ["convert", str(folders["gpt"]), *folders["common"],
                                 "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and words in result.output
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_quantizing_a_quantized_folder_is_refused(folders, tmp_path):
    result = runner.invoke(app, ["convert", str(folders["root"] / "q8"), "--quantize", "4",
                                 "--out", str(tmp_path / "again")])
    assert result.exit_code == 2 and "already quantized" in result.output
    result = runner.invoke(app, ["generate", str(folders["root"] / "q8"), "--quantize", "8",
                                 "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "already quantized" in result.output
    assert not (tmp_path / "again").exists() and not (tmp_path / "x.png").exists()


def _maskgit_folder(root):
    from test_maskgit import CONFIG, save_checkpoint, tiny_model

    vq = save_vq(tiny_vq(), root / "vq.pt")
    return ["convert", str(save_checkpoint(tiny_model(), root / "m.pth")), "--family", "maskgit",
            "--config", CONFIG, "--autoencoder", str(vq)]


def _dit_folder(root, sit=False):
    from dit_files import TINY_CONFIG as DIT_CONFIG, save_pt, save_vae, tiny_dit, tiny_vae

    vae = save_vae(tiny_vae(), root / "vae")
    return ["convert", str(save_pt(tiny_dit(sit=sit), root / "DiT-tiny.pt")), "--config",
            DIT_CONFIG, "--autoencoder", str(vae), *(["--family", "sit"] if sit else [])]


@pytest.mark.parametrize("family", ["maskgit", "dit", "sit"])
def test_info_check_bounds_8bit_error_for_every_family(family, tmp_path):
    args = _maskgit_folder(tmp_path) if family == "maskgit" else \
        _dit_folder(tmp_path, sit=family == "sit")
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "float")])
    assert result.exit_code == 0, result.output
    rows = {r["bits"]: r for r in check_quantization(tmp_path / "float", [8, 4], 32)}
    if family in ("dit", "sit"):
        # stated bound for 8-bit: the prediction's relative error stays under 2%
        assert rows[8]["relative error"] < 0.02
        assert rows[4]["relative error"] > rows[8]["relative error"]
    else:
        assert rows[8]["top-1 agreement"] >= 0.9 and rows[8]["mean KL"] < 5e-3
        assert rows[4]["mean KL"] > rows[8]["mean KL"]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 2, 4, 512])
def test_just_in_time_dequantization_matches_mlx_quantized_layer(bits, rows):
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_imgen.quantize import JustInTimeLinear

    key_w, key_x = mx.random.split(mx.random.key(bits))
    layer = nn.Linear(384, 1536)
    layer.weight = mx.random.normal((1536, 384), key=key_w) * 0.05
    plain = nn.QuantizedLinear.from_linear(layer, 64, bits)
    fast = nn.QuantizedLinear.from_linear(layer, 64, bits)
    fast.__class__ = JustInTimeLinear
    for scale in (1.0, 1e30):  # large inputs stay finite in both
        x = mx.random.normal((rows, 384), key=key_x) * scale
        with mx.stream(mx.cpu):
            expected, got = plain(x), fast(x)
        assert mx.all(mx.isfinite(expected)).item() and mx.all(mx.isfinite(got)).item()
        # the same products summed in another order: fp32 rounding of the largest output
        np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-4,
                                   atol=1e-5 * float(mx.abs(expected).max()))


def test_quantized_models_use_the_just_in_time_layer_and_keep_quantized_weights():
    import mlx.nn as nn
    from conftest import build, tiny_config

    from mlx_imgen.quantize import JustInTimeLinear, quantize_model

    model = build(tiny_config())
    quantize_model(model, 8, 32)
    linears = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert linears and all(type(m) is JustInTimeLinear for m in linears)
    assert all(m.weight.dtype == mx.uint32 for m in linears)
