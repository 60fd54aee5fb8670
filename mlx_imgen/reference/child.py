"""The torch reference in a process of its own, for a fair comparison with MLX.

`mlx-imgen` re-executes itself with OpenBLAS preloaded and a `g++` wrapper for MLX's runtime
compiler (`mlx_imgen.blas`). Torch in that process would share the preloaded BLAS and its thread
pool, so `profile_reference_in_child` hands the workload (its plan, a text model's prompt length
and the model pickled into a temporary folder, the transformer's weights beside it as
safetensors) to `python -m mlx_imgen.reference.child` started without what the re-exec added.
On the CPU the child times a few steps at one thread and at all cores, keeps the faster and says
so in the record's `label`; on CUDA and MPS threads do not matter and it runs as asked.
"""

import contextlib
import dataclasses
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_imgen import blas
from mlx_imgen.profiling import Workload

CALIBRATION_STEPS = 2   # timed steps per thread count and round, after one warm-up step
CALIBRATION_ROUNDS = 2  # interleaved, the best kept: one round on a shared machine can mislead


def clean_environment(env: dict) -> dict:
    """`env` less what `mlx_imgen.blas`'s re-exec added for MLX: the preloaded OpenBLAS, the
    runtime compiler's `g++` wrapper on PATH, its TMPDIR and the markers of both."""
    env = dict(env)
    library = env.pop(blas.ENV_ACTIVE, None)
    env.pop(blas.ENV_JIT_ACTIVE, None)
    kept = [p for p in env.get("LD_PRELOAD", "").split(":")
            if p and p != library and "openblas" not in p.lower()]
    if kept:
        env["LD_PRELOAD"] = ":".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    jit_root = str(blas._cache_file().parent / "jit")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(jit_root))
    if env.get("TMPDIR", "").startswith(jit_root):
        del env["TMPDIR"]
    return env


WEIGHTS_FILE = "transformer.safetensors"


@contextlib.contextmanager
def detached_weights(model, path: str):
    """Write `model`'s parameters to the safetensors file `path` and, while the block runs,
    leave empty arrays in their place: the pickled request then holds the model's structure
    only. Pickling the weights themselves would copy every array to numpy and keep each copy
    until the dump ends (the pickler's memo), twice the model in the parent (a Janus-Pro-1B in
    float32 ran a 24 GB machine out of memory so)."""
    parameters = model.parameters()
    mx.save_safetensors(path, dict(tree_flatten(parameters)))
    model.update(tree_map(lambda _: mx.zeros((0,)), parameters))
    try:
        yield
    finally:
        model.update(parameters)


def attach_weights(model, path: str) -> None:
    """Put the parameters `detached_weights` wrote back into the unpickled `model`."""
    model.update(tree_unflatten(list(mx.load(path).items())))


def profile_reference_in_child(work: Workload, batch_size: int, *, trials: int = 3,
                               step_budget_s: float | None = None, seed: int = 0,
                               device: str | None = None, threads: int | None = None,
                               autoencoder_kind: str | None = None,
                               min_steps: int = 1) -> dict:
    """`profile_reference`'s record of `work` (and its `autoencoder`, if any) at one batch size,
    measured in a child process without the preloaded BLAS. `threads` None on the CPU picks the
    faster of one thread and all cores. The record adds `process`, `label`, `child_environment`
    and, where calibrated, `threads_calibration` (seconds per step by thread count)."""
    request = {"work": dataclasses.replace(work, decode=None), "batch_size": batch_size,
               "trials": trials, "step_budget_s": step_budget_s, "seed": seed, "device": device,
               "threads": threads, "autoencoder_kind": autoencoder_kind, "min_steps": min_steps}
    with tempfile.TemporaryDirectory(prefix="mlx-imgen-reference-") as folder:
        request_path, result_path = Path(folder) / "request.pkl", Path(folder) / "record.json"
        request["weights"] = str(Path(folder) / WEIGHTS_FILE)
        with detached_weights(work.model, request["weights"]):
            with open(request_path, "wb") as f:
                pickle.dump(request, f, protocol=pickle.HIGHEST_PROTOCOL)
        env = clean_environment(os.environ)
        done = subprocess.run([sys.executable, "-m", "mlx_imgen.reference.child",
                               str(request_path), str(result_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0 or not result_path.exists():
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"the torch reference child process for {work.name} at batch "
                               f"{batch_size} failed (exit {done.returncode}); its error:\n{tail}")
        return json.loads(result_path.read_text())


def pick_threads(framework, work: Workload, batch_size: int, seed: int) -> tuple[int, dict]:
    """The faster of one thread and all cores for `framework`'s sampling steps, with the
    seconds per step each took: after one warm-up step each, CALIBRATION_ROUNDS interleaved
    rounds of CALIBRATION_STEPS timed steps, the best round of each kept."""
    import torch

    from mlx_imgen.profiling import _run_once

    labels = framework.labels(batch_size)
    counts = sorted({1, os.cpu_count() or 1})
    per_step = {count: float("inf") for count in counts}
    for round_ in range(CALIBRATION_ROUNDS):
        for count in counts:
            torch.set_num_threads(count)
            if round_ == 0:
                _run_once(framework, work, labels, 1, seed, decode=False)
            times = _run_once(framework, work, labels, CALIBRATION_STEPS, seed,
                              decode=False)["step_times"]
            per_step[count] = min(per_step[count], sum(times) / len(times))
    return min(per_step, key=per_step.get), per_step


def label(record: dict, per_step: dict | None) -> str:
    """What ran, in words: device, threads and how they were chosen, and the preload."""
    if record["device"] != "cpu":
        return f"torch {record['device']} ({record['device_name']}; own process)"
    preload = record.get("ld_preload")
    loaded = f"LD_PRELOAD={preload}" if preload else "no preloaded BLAS"
    threads = record.get("torch_threads")
    threads = f"{threads} thread{'s' if threads != 1 else ''}"
    if not per_step:
        return f"torch cpu, {threads} as asked; {loaded}"
    tried = ", ".join(f"{c}: {t:.3g}" for c, t in per_step.items())
    return f"torch cpu, {threads} (best of {tried} s/step); {loaded}"


def run_request(request: dict) -> dict:
    """The record for one pickled request (see `profile_reference_in_child`), in this process."""
    from . import pick_device
    from .backbone import from_mlx
    from .profiling import TorchFramework, profile_reference

    work, batch_size = request["work"], request["batch_size"]
    attach_weights(work.model, request["weights"])
    device = request["device"] or pick_device()
    model = from_mlx(work.model, device)
    threads, per_step = request["threads"], None
    if device == "cpu" and threads is None:
        try:
            threads, per_step = pick_threads(TorchFramework(model, work, device, None), work,
                                             batch_size, request["seed"])
        except (RuntimeError, MemoryError):
            threads = None  # out of memory: the measurement below records it
    record = profile_reference(
        work, batch_size, trials=request["trials"], step_budget_s=request["step_budget_s"],
        seed=request["seed"], device=device, torch_model=model, threads=threads,
        autoencoder=work.autoencoder, autoencoder_kind=request["autoencoder_kind"],
        min_steps=request["min_steps"])
    import torch

    record["process"] = "child"
    record["child_environment"] = {
        "pid": os.getpid(), "ld_preload": os.environ.get("LD_PRELOAD") or None,
        "blas_active": os.environ.get(blas.ENV_ACTIVE), "jit_active":
        os.environ.get(blas.ENV_JIT_ACTIVE), "torch_default_threads": torch.get_num_threads()}
    if per_step:
        record["threads_calibration"] = {str(c): t for c, t in per_step.items()}
    record["label"] = label(record, per_step)
    return record


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m mlx_imgen.reference.child REQUEST.pkl RECORD.json")
    with open(argv[0], "rb") as f:
        request = pickle.load(f)  # written by profile_reference_in_child in the parent
    Path(argv[1]).write_text(json.dumps(run_request(request)))


if __name__ == "__main__":
    main(sys.argv[1:])
