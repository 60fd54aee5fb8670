"""Run a stage benchmark's workers (benchmarks/stages.py) inside the test process instead of a
process each, so the rows of tiny parts are built quickly."""

import argparse
import contextlib
import io
import json

import torch


def in_process(bench_module):
    """A replacement for workers.run_worker that calls the bench's worker here and reads its
    RESULT line."""
    def run(script, name, argv, threads):
        options = dict(zip(argv[::2], argv[1::2]))
        args = argparse.Namespace(worker=name, threads=threads or 1, sizes=[options["--sizes"]],
                                  batches=[int(options["--batches"])], dtype=options["--dtype"],
                                  steps_timed=int(options["--steps-timed"]))
        out = io.StringIO()
        # a worker owns its process: it turns torch's autograd off and sets its threads, which
        # must not outlive it here
        threads = torch.get_num_threads()
        try:
            with contextlib.redirect_stdout(out), torch.no_grad():
                bench_module.worker(args)
        finally:
            torch.set_num_threads(threads)
        line = next(ln for ln in out.getvalue().splitlines() if ln.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])
    return run
