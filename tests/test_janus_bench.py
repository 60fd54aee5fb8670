"""The Janus-Pro rows of `make bench` and the decode's weight-bandwidth bound: the bytes one
decode step reads, the bound's arithmetic, the bench's rows on a tiny random Janus, and the
profile command's decode table. No timings are asserted."""

import argparse
import json
import sys
from pathlib import Path

import pytest
from mlx.utils import tree_flatten
from typer.testing import CliRunner

from janus_files import write_tiny_janus
from janus_tokenizer_files import write_janus_tokenizer
from mlx_imgen.cli.app import app
from mlx_imgen.pipeline import Pipeline
from mlx_imgen.profiling import add_bandwidth_bound, decode_weight_bytes, report
from mlx_imgen.report_format import markdown

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import bench  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny Janus-Pro (transformers layout) converted from a local folder, in float32."""
    root = tmp_path_factory.mktemp("janus-bench")
    write_tiny_janus(root / "src", layout="transformers")
    write_janus_tokenizer(root / "src")
    result = runner.invoke(app, ["convert", str(root / "src"), "--out", str(root / "tiny"),
                                 "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    return root / "tiny"


def _expected_bytes(model) -> int:
    """Written out: the stack, norms, aligner and head in full; of the code table (token_embed)
    one row; of the text table none but one row (its prefix was read by the prefill)."""
    total = 0
    for path, value in tree_flatten(model.parameters()):
        table = path.split(".")[0] in ("token_embed", "text_embed")
        total += value.nbytes // value.shape[0] if table else value.nbytes
    return total


@pytest.mark.parametrize("bits", [None, 4])
def test_a_decode_step_reads_every_weight_but_one_row_of_each_table(tiny_folder, bits):
    pipe = Pipeline(tiny_folder)
    if bits:
        pipe.quantize(bits, 32)
    model = pipe.transformer
    everything = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    tables = sum(v.nbytes for k, v in tree_flatten(model.parameters())
                 if k.startswith(("token_embed.", "text_embed.")))
    assert tables > 0 and decode_weight_bytes(model) == _expected_bytes(model)
    assert decode_weight_bytes(model) < everything - tables // 2


def test_the_bound_is_weight_bytes_over_bandwidth_and_only_at_batch_one():
    def record(batch, per_token, status="ok"):
        return {"status": status, "batch_size": batch, "weight_bytes_per_token": 6e9,
                "stages_s": {"per_token_decode": per_token}}

    rows = [record(1, 2.0), record(16, 3.0), record(1, 2.0, "out_of_memory"),
            {"status": "ok", "batch_size": 1, "stages_s": {"per_token_decode": None}}]
    add_bandwidth_bound(rows, 12.0)
    assert rows[0]["bandwidth_bound_s_per_token"] == pytest.approx(0.5)   # 6 GB / 12 GB/s
    assert rows[0]["bandwidth_fraction"] == pytest.approx(0.25)           # 0.5 s of 2 s
    assert all("bandwidth_fraction" not in r for r in rows[1:])
    unknown = [record(1, 2.0)]
    add_bandwidth_bound(unknown, None)
    assert "bandwidth_fraction" not in unknown[0]


def test_the_bench_gains_janus_rows_with_prefill_per_token_and_the_bound(tiny_folder):
    def build(bits):
        pipe = Pipeline(tiny_folder)
        if bits:
            pipe.quantize(bits, 32)
        return pipe

    args = argparse.Namespace(step_budget=0.01, min_steps=5)
    rows = bench.janus_rows(args, None, build=build, name="tiny-janus")
    assert [(r["model"], r["batch_size"]) for r in rows] == [
        ("tiny-janus", 1), ("tiny-janus", 16), ("tiny-janus-8bit", 1), ("tiny-janus-4bit", 1)]
    for r in rows:
        assert r["status"] == "ok" and r["prompt_tokens"] == 32
        assert r["measured_steps"] >= 6          # the prefill and at least 5 decode steps
        assert r["stages_s"]["prefill"] > 0 and r["stages_s"]["per_token_decode"] > 0
        assert r["decode_images"] == 1 and r["stages_s"]["decode"] > 0
        assert r["gflops_breakdown"]["decode"] > 0
    assert rows[2]["weight_bytes_per_token"] < rows[0]["weight_bytes_per_token"]
    assert rows[3]["weight_bytes_per_token"] < rows[2]["weight_bytes_per_token"]
    rep = report(rows)
    assert rep["environment"]["peak"]["bandwidth_gbs"] > 0   # measured on the CPU
    fractions = [r.get("bandwidth_fraction") for r in rep["results"]]
    assert all(f and f > 0 for f in fractions[:1] + fractions[2:]) and fractions[1] is None
    text = markdown(rep)
    table = text.split("## Next-token decode")[1].split("\n\n")[1].splitlines()
    assert len(table) == 2 + 4 and all(line.endswith("% |") for line in (table[2], *table[4:]))


def test_profile_reports_the_decode_against_its_bandwidth_bound(tiny_folder, tmp_path):
    out = tmp_path / "profile.json"
    result = runner.invoke(app, ["profile", str(tiny_folder), "--batch-sizes", "1,2",
                                 "--trials", "1", "--step-budget", "0.01", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "Next-token decode" in result.output and "% of bound" in result.output
    first, second = json.loads(out.read_text())["results"]
    assert 0 < first["bandwidth_fraction"] and "bandwidth_fraction" not in second
    assert first["bandwidth_bound_s_per_token"] == pytest.approx(
        first["weight_bytes_per_token"] / (json.loads(out.read_text())["environment"]["peak"]
                                           ["bandwidth_gbs"] * 1e9))


def test_a_cut_short_next_token_loop_scales_its_decode_steps_not_its_prefill():
    from mlx_imgen.profiling import _full_loop

    # prefill 6 s, then 1 s per token: 576 tokens take 6 + 575 s, not 11 / 6 x 576
    assert _full_loop([6.0] + [1.0] * 5, 576, prefilled=True) == pytest.approx(581.0)
    assert _full_loop([2.0] * 4, 40, prefilled=False) == pytest.approx(80.0)
    assert _full_loop([3.0, 1.0], 2, prefilled=True) == pytest.approx(4.0)   # not cut short


def test_a_random_quantized_pipeline_never_holds_its_float_weights():
    """Pipeline.random(bits=4) quantizes before any weight is computed: Janus-Pro-7B in float32
    (30 GB) could not be built on a 16 GB machine otherwise."""
    import mlx.core as mx

    from mlx_imgen.profiling import parameter_count
    from mlx_imgen.quantize import weight_bytes

    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    pipe = Pipeline.random("llamagen-c2i-b-256", "float32", bits=4)
    built = mx.get_peak_memory() - before
    held = weight_bytes(pipe.transformer) + weight_bytes(pipe.autoencoder)
    float_bytes = 4 * parameter_count(pipe.transformer)
    assert pipe.index["quantization"]["bits"] == 4
    assert weight_bytes(pipe.transformer) < float_bytes / 4
    # a float copy of the transformer, built and then quantized, would have peaked above this
    assert built < held + float_bytes / 2
