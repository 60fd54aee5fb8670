import json

import pytest
from typer.testing import CliRunner

from mlx_imgen.cli.app import app
from mlx_imgen.paradigms import PARADIGMS

runner = CliRunner()
FIELDS = ["model", "paradigm", "size", "parameters", "dtype", "batch_size", "steps",
          "measured_steps", "extrapolated", "forward_passes_per_image", "gflops_per_image",
          "latency_s", "images_per_s", "peak_memory_gb", "achieved_gflops_per_s", "stages_s"]


def test_profile_json_has_every_field_for_all_three_paradigms(tmp_path):
    out, md = tmp_path / "profile.json", tmp_path / "profile.md"
    result = runner.invoke(app, ["profile", "--sizes", "S", "--batch-sizes", "1", "--trials", "2",
                                 "--step-budget", "0.001", "--steps", "2", "--json", str(out),
                                 "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["schema_version"] == 1
    for key in ("device", "backend", "mlx_version", "blas", "processor"):
        assert report["environment"][key]
    assert {r["paradigm"] for r in report["results"]} == set(PARADIGMS)
    assert len(report["results"]) == 3
    for r in report["results"]:
        for field in FIELDS:
            assert field in r, field
        lat = r["latency_s"]
        assert 0 < lat["min"] <= lat["median"] <= lat["max"]
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / lat["median"])
        assert r["peak_memory_gb"] > 0 and r["parameters"] > 1e7
        assert r["stages_s"]["sampling"] > 0 and r["stages_s"]["conditioning"] >= 0
        # a budget this small times one step (a next-token loop its prefill and 5 decode
        # steps) and says the rest is extrapolated
        assert r["measured_steps"] == (6 if r["paradigm"] == "next-token" else 1)
        assert r["extrapolated"] is True
    passes = {r["paradigm"]: r["forward_passes_per_image"] for r in report["results"]}
    assert passes == {"next-token": 512, "masked-token": 4, "diffusion": 4}
    text = md.read_text()
    assert "extrapolated" in text and "| next-token | S | - | 34.3M | 1 | 256 | 512 |" in text


@pytest.mark.parametrize("args, words", [
    (["--sizes", "M"], "unknown size"),
    (["--paradigms", "gan"], "unknown paradigm"),
    (["--batch-sizes", "0"], "batch sizes must be positive"),
    (["--batch-sizes", "a,b"], "batch sizes must be positive"),
    (["--steps", "0"], "steps must be an integer at least 1"),
    (["--image-size", "250"], "must be a multiple of 16"),
    (["--json", "/nonexistent-dir/x.json"], "does not exist"),
])
def test_profile_bad_input_gets_one_sentence_and_exit_code_2(args, words):
    result = runner.invoke(app, ["profile", "--trials", "1", *args])
    assert result.exit_code == 2
    assert words in result.output
    assert "Traceback" not in result.output
