"""The aMUSEd rows of `make bench` (benchmarks/amused.py) on a tiny U-ViT, its workers run in
this process: both frameworks run the same architecture, every row is filled, the table renders.
No timings are asserted."""

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import torch

from mlx_imgen.families.amused import config_from_json
from mlx_imgen.flops import uvit_forward_flops
from uvit_files import tiny_config

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import amused  # noqa: E402


def test_the_torch_worker_builds_the_same_architecture_as_mlx():
    for size in ("256", "512"):
        assert config_from_json(amused.diffusers_config(size)) == amused.config(size)


def test_rows_of_both_frameworks_on_a_tiny_uvit(monkeypatch):
    tiny = config_from_json(tiny_config(stages=True))
    monkeypatch.setattr(amused, "config", lambda size: tiny)

    def in_process(script, name, argv, threads):
        args = argparse.Namespace(worker=name, threads=threads or 1, sizes=argv[1:2],
                                  batches=[int(b) for b in argv[3:]])
        out = io.StringIO()
        # a worker owns its process: it turns torch's autograd off and sets its threads, which
        # must not outlive it here
        threads = torch.get_num_threads()
        try:
            with contextlib.redirect_stdout(out), torch.no_grad():
                amused.worker(args)
        finally:
            torch.set_num_threads(threads)
        line = next(ln for ln in out.getvalue().splitlines() if ln.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])

    monkeypatch.setattr(amused.workers, "run_worker", in_process)
    monkeypatch.setattr(amused.workers, "mlx_setup", lambda: "MLX setup")
    result = amused.measure(["256"], [1, 2], repeats=1)
    assert [(r["model"], r["batch"], r["rows"]) for r in result["rows"]] == \
        [("amused-256", 1, 2), ("amused-256", 2, 4)]
    for row in result["rows"]:
        assert row["gflops_per_forward"] == uvit_forward_flops(tiny).total * row["rows"] / 1e9
        assert row["mlx"]["min_s"] > 0 and row["torch"]["min_s"] > 0 and row["mlx_peak_mb"] > 0
        assert row["mlx"]["image_s"] == amused.STEPS * row["mlx"]["min_s"] / row["batch"]
    table = amused.markdown(result)
    assert table.count("| amused-256 |") == 2 and "MLX setup" in table
