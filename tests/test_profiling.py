import json

import mlx.core as mx
import pytest
from typer.testing import CliRunner

from conftest import build, tiny_config
from mlx_imgen.autoencoders.vq import VQConfig, VQModel, decode_flops
from mlx_imgen.cli.app import app
from mlx_imgen.flops import plan_flops
from mlx_imgen.paradigms import FlowPlan, MaskedTokenPlan, NextTokenPlan
from mlx_imgen.profiling import REPORT_FIELDS, RECORD_FIELDS, Workload, findings, profile_workload, report

TINY_VQ = VQConfig(codebook_size=24, codebook_embed_dim=4, ch=8, ch_mult=(1, 2), z_channels=8,
                   num_res_blocks=1, norm_groups=4)


def token_workload(causal: bool, plan) -> Workload:
    if causal:
        model = build(tiny_config(causal=True, positions="rope2d"))
    else:
        model = build(tiny_config(conditioning="adaln", mask_token=True, positions="learned"))
    vq = VQModel(TINY_VQ)
    mx.eval(vq.parameters())
    g = model.config.grid_size
    return Workload(name="tiny", model=model, plan=plan, size="T",
                    decode=lambda codes: vq.decode_codes(codes.reshape(-1, g, g)),
                    decode_flops_per_image=decode_flops(TINY_VQ, g, g))


def flow_workload(steps=3) -> Workload:
    model = build(tiny_config(input="patches", conditioning="adaln", timestep=True,
                              positions="sincos2d", in_channels=4, patch_size=2))
    return Workload(name="tiny-flow", model=model, plan=FlowPlan(steps=steps), size="T",
                    latent_shape=(8, 8, 4))


@pytest.mark.parametrize("make", [
    lambda: token_workload(True, NextTokenPlan(num_tokens=16, cfg_scale=2.0)),
    lambda: token_workload(False, MaskedTokenPlan(num_tokens=16, steps=4)),
    lambda: flow_workload(),
])
def test_record_has_every_field_stage_and_the_flops_of_flops_py(make):
    work = make()
    r = profile_workload(work, 2, trials=2)
    assert set(RECORD_FIELDS) <= set(r) and r["status"] == "ok"
    stages = r["stages_s"]
    assert stages["conditioning"] >= 0 and stages["sampling"] > 0 and stages["per_step"] > 0
    assert (stages["decode"] is not None and stages["decode"] > 0) == (work.decode is not None)
    assert (stages["per_token"] is not None) == (r["paradigm"] == "next-token")
    expected = plan_flops(work.model.config, work.plan).total + work.decode_flops_per_image
    assert r["gflops_per_image"] == pytest.approx(expected / 1e9, rel=1e-12)
    assert r["measured_steps"] == work.plan.steps and r["extrapolated"] is False


def test_step_budget_extrapolates_and_says_so():
    r = profile_workload(flow_workload(steps=40), 1, trials=1, step_budget_s=1e-6)
    assert r["measured_steps"] == 1 and r["extrapolated"] is True
    assert r["stages_s"]["sampling"] == pytest.approx(40 * r["stages_s"]["per_step"])


def test_batch_past_the_memory_limit_is_recorded_and_the_sweep_goes_on():
    work = flow_workload(steps=2)
    small = profile_workload(work, 1, trials=1)
    # peak memory counts every live array in the process, so leave room above batch 1's peak;
    # batch 256 needs about 23 MB more than batch 1
    limit = int(small["peak_memory_gb"] * 1e9) + 8_000_000
    records = [profile_workload(work, batch, trials=1, memory_limit=limit) for batch in (1, 256, 2)]
    assert [r["status"] for r in records] == ["ok", "out_of_memory", "ok"]
    assert "exceeded the limit" in records[1]["error"]
    assert records[1]["batch_size"] == 256 and records[1]["gflops_per_image"] > 0


def test_findings_name_the_paradigm_each_figure_points_to():
    def rec(paradigm, batch, flops, latency):
        return {"status": "ok", "model": paradigm, "paradigm": paradigm, "size": "S",
                "batch_size": batch, "gflops_per_image": flops, "latency_s": {"median": latency},
                "images_per_s": batch / latency}
    results = [rec("next-token", 1, 10, 5.0), rec("next-token", 8, 10, 6.0),
               rec("diffusion", 1, 900, 2.0), rec("diffusion", 8, 900, 12.0)]
    found = {f["claim"]: f for f in findings(results)}
    assert found["fewest_flops"]["paradigm"] == "next-token" and found["fewest_flops"]["agrees"]
    assert found["lowest_latency_batch_1"]["paradigm"] == "diffusion"
    assert found["highest_throughput"]["paradigm"] == "next-token"
    assert found["highest_throughput"]["batch_size"] == 8


def test_report_has_the_documented_schema():
    rep = report([profile_workload(flow_workload(), 1, trials=1)], settings={"x": 1})
    assert set(REPORT_FIELDS) <= set(rep) and rep["schema_version"] == 1
    json.dumps(rep)  # serialisable as is
    for key in ("device", "backend", "mlx_version", "blas", "processor", "peak"):
        assert key in rep["environment"]


def test_cli_memory_limit_records_out_of_memory_and_keeps_going(tmp_path):
    out, md = tmp_path / "p.json", tmp_path / "p.md"
    result = CliRunner().invoke(app, [
        "profile", "--sizes", "S", "--paradigms", "next-token", "--batch-sizes", "1,64,2",
        "--trials", "1", "--step-budget", "0.01", "--memory-limit", "0.25", "--json", str(out),
        "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    statuses = [r["status"] for r in json.loads(out.read_text())["results"]]
    assert statuses == ["ok", "out_of_memory", "ok"]
    assert "| next-token | S | - | 34.3M | 64 | 256 | 512 | 29.4 | out of memory |" in md.read_text()


def test_profile_puts_converted_next_token_and_masked_token_models_side_by_side(tmp_path):
    from llamagen_files import TINY_CONFIG, save_gpt, save_vq, tiny_gpt, tiny_vq
    from test_maskgit import CONFIG, save_checkpoint, tiny_model

    runner = CliRunner()
    vq = save_vq(tiny_vq(), tmp_path / "vq.pt")
    for name, source, family, config in (
            ("ar", save_gpt(tiny_gpt(), tmp_path / "gpt.pt"), "llamagen", TINY_CONFIG),
            ("mask", save_checkpoint(tiny_model(), tmp_path / "m.pth"), "maskgit", CONFIG)):
        result = runner.invoke(app, ["convert", str(source), "--family", family, "--config", config,
                                     "--autoencoder", str(vq), "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    out = tmp_path / "side.json"
    result = runner.invoke(app, ["profile", str(tmp_path / "ar"), str(tmp_path / "mask"),
                                 "--batch-sizes", "1,2", "--trials", "1", "--steps", "4",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())["results"]
    assert [(r["paradigm"], r["batch_size"]) for r in records] == [
        ("next-token", 1), ("next-token", 2), ("masked-token", 1), ("masked-token", 2)]
    for r in records:
        assert r["stages_s"]["decode"] > 0 and r["gflops_breakdown"]["decode"] > 0
        assert r["forward_passes_per_image"] == (32 if r["paradigm"] == "next-token" else 8)
