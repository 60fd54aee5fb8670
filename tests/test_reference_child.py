"""The fair reference: torch measured in a child process without the BLAS preloaded for MLX, at
the faster of one thread and all cores, saying so in its record; and the step budget's floor."""

import dataclasses
import os

import pytest

torch = pytest.importorskip("torch")

from mlx_imgen import blas  # noqa: E402
from mlx_imgen.profiling import profile_workload  # noqa: E402
from mlx_imgen.reference.child import clean_environment, profile_reference_in_child  # noqa: E402
from test_reference import random_mlx_vq, tiny_workload  # noqa: E402


def test_clean_environment_undoes_what_the_blas_re_exec_added():
    jit = blas._cache_file().parent / "jit" / "0123456789abcdef"
    env = {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0:/opt/keep.so",
           blas.ENV_ACTIVE: "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
           blas.ENV_JIT_ACTIVE: blas.JIT_FLAGS, "TMPDIR": str(jit / "tmp"),
           "PATH": f"{jit / 'bin'}{os.pathsep}/usr/bin", "HOME": "/home/me"}
    clean = clean_environment(env)
    assert clean == {"LD_PRELOAD": "/opt/keep.so", "PATH": "/usr/bin", "HOME": "/home/me"}
    assert "LD_PRELOAD" not in clean_environment({"LD_PRELOAD": "/x/libopenblas.so.0"})
    assert clean_environment({"TMPDIR": "/scratch"}) == {"TMPDIR": "/scratch", "PATH": ""}


@pytest.mark.parametrize("paradigm", ["next-token", "diffusion"])
def test_reference_in_a_child_runs_without_the_preload_at_its_best_thread_count(paradigm):
    work = tiny_workload(paradigm)
    if paradigm == "next-token":
        work = dataclasses.replace(work, autoencoder=random_mlx_vq())  # decoded in the child
    mlx_record = profile_workload(work, 2, trials=1)
    record = profile_reference_in_child(work, 2, trials=2, device="cpu")
    assert set(mlx_record) <= set(record) and record["status"] == "ok"
    assert record["forward_passes_per_image"] == mlx_record["forward_passes_per_image"]
    assert record["process"] == "child"
    child = record["child_environment"]
    assert child["pid"] != os.getpid()
    assert "openblas" not in (child["ld_preload"] or "").lower()
    assert child["blas_active"] is None and child["jit_active"] is None
    calibration = record["threads_calibration"]
    assert set(calibration) == {str(c) for c in {1, os.cpu_count()}}
    assert record["torch_threads"] == int(min(calibration, key=calibration.get))
    threads = record["torch_threads"]
    assert f"torch cpu, {threads} thread{'s' if threads > 1 else ''} (best of 1: " in record["label"]
    assert "no preloaded BLAS" in record["label"]
    assert (record["stages_s"]["decode"] is not None) == (paradigm == "next-token")


def test_reference_in_a_child_reports_its_failure_in_one_error():
    work = tiny_workload("masked-token")
    with pytest.raises(RuntimeError, match="torch reference child process for tiny-masked-token"):
        profile_reference_in_child(work, 1, trials=1, device="no-such-device")


def test_min_steps_times_at_least_that_many_steps_whatever_the_budget():
    work = tiny_workload("masked-token", steps=6)
    record = profile_workload(work, 1, trials=2, step_budget_s=1e-9, min_steps=4)
    assert record["measured_steps"] == 4 and record["extrapolated"] is True
    spread = record["step_s"]
    assert spread["count"] == 8 and 0 < spread["min"] <= spread["median"] <= spread["max"]
    full = profile_workload(work, 1, trials=1, step_budget_s=1e-9, min_steps=10)
    assert full["measured_steps"] == 6 and full["extrapolated"] is False
