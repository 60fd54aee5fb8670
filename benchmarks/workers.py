"""One benchmark worker in a process of its own: MLX under `python -m mlx_imgen.blas` (OpenBLAS
preloaded, runtime-compiler flags on), torch without the preload at a given thread count. A
worker prints one `RESULT {json}` line; the parent reads it back."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_worker(script: str, worker: str, argv: list[str], threads: int | None = None) -> dict:
    """Run `script --worker WORKER [--threads N] ARGV` and return its RESULT; a worker whose
    name ends in "mlx" runs under the preload, any other without it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_IMGEN_")}
    env.pop("LD_PRELOAD", None)
    script = os.path.abspath(script)
    if worker.endswith("mlx"):
        cmd = [sys.executable, "-m", "mlx_imgen.blas", sys.executable, script, "--worker", worker]
    else:
        cmd = [sys.executable, script, "--worker", worker, "--threads", str(threads or 1)]
    out = subprocess.run(cmd + argv, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{worker} worker ({threads or 1} threads) failed:\n{out.stderr[-3000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def mlx_setup() -> str:
    """What the MLX workers run with, as `python -m mlx_imgen.blas` reports it."""
    return subprocess.run([sys.executable, "-m", "mlx_imgen.blas"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()


def machine() -> str:
    """The CPU, and the GPU where MLX runs on one (a benchmark row names what it ran on)."""
    import mlx.core as mx

    from mlx_imgen.devices import cpu_description
    if mx.default_device().type == mx.gpu:
        return f"{mx.device_info().get('device_name', 'a GPU')} (host: {cpu_description()})"
    return cpu_description()
