"""An optimized BLAS for MLX's CPU backend on Linux, whose wheel links the slow reference BLAS.

The `mlx-imgen` entry point finds OpenBLAS, checks it numerically against numpy in a child
process (a library built for another CPU can crash or be wrong), and re-executes itself with the
library preloaded. Set MLX_IMGEN_BLAS=reference to opt out, or to a library path to choose one.
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

ENV_CHOICE = "MLX_IMGEN_BLAS"
ENV_ACTIVE = "MLX_IMGEN_BLAS_ACTIVE"
SEARCH = [
    "/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/*-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
]
PROBE = """
import numpy as np, mlx.core as mx
rng = np.random.default_rng(0)
a, b = rng.standard_normal((192, 160), dtype=np.float32), rng.standard_normal((160, 96), dtype=np.float32)
out = np.array(mx.matmul(mx.array(a), mx.array(b), stream=mx.cpu))
err = float(np.abs(out - a @ b).max() / np.abs(a @ b).max())
raise SystemExit(0 if err < 1e-4 else 3)
"""


def find_library() -> str | None:
    choice = os.environ.get(ENV_CHOICE, "")
    if choice and choice != "reference":
        return choice if os.path.exists(choice) else None
    for pattern in SEARCH:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlx-imgen" / "blas-probe.json"


def probe(library: str) -> bool:
    """Whether MLX matmul agrees with numpy (relative error < 1e-4) with `library` preloaded."""
    import mlx.core as mx

    stamp = f"{library}:{os.path.getmtime(library)}:{mx.__version__}"
    cache = _cache_file()
    try:
        cached = json.loads(cache.read_text())
        if stamp in cached:
            return cached[stamp]
    except (OSError, ValueError):
        cached = {}
    env = dict(os.environ, LD_PRELOAD=library)
    try:
        ok = subprocess.run([sys.executable, "-c", PROBE], env=env, timeout=120,
                            capture_output=True).returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    cached[stamp] = ok
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(cached))
    except OSError:
        pass
    return ok


def ensure_optimized_blas() -> None:
    """Re-execute this process with a verified OpenBLAS preloaded, where that applies."""
    if not sys.platform.startswith("linux") or ENV_ACTIVE in os.environ:
        return
    if os.environ.get(ENV_CHOICE) == "reference":
        os.environ[ENV_ACTIVE] = "reference"
        return
    library = find_library()
    if library is None or not probe(library):
        os.environ[ENV_ACTIVE] = "reference"
        return
    env = dict(os.environ)
    env[ENV_ACTIVE] = library
    env["LD_PRELOAD"] = ":".join(p for p in (library, os.environ.get("LD_PRELOAD")) if p)
    os.execve(sys.executable, list(sys.orig_argv), env)


def describe() -> str:
    """Which BLAS MLX's CPU matmuls go through in this process."""
    if sys.platform == "darwin":
        return "Accelerate"
    active = os.environ.get(ENV_ACTIVE)
    preload = os.environ.get("LD_PRELOAD", "")
    if active and active != "reference" and active in preload:
        return f"OpenBLAS ({active})"
    if not active and "openblas" in preload.lower():
        return f"OpenBLAS ({preload})"
    return "reference BLAS (bundled with the mlx wheel)"


if __name__ == "__main__":
    # `python -m mlx_imgen.blas CMD ...` runs CMD with the verified BLAS preloaded (make test).
    ensure_optimized_blas()
    if len(sys.argv) > 1:
        os.execvp(sys.argv[1], sys.argv[1:])
    print(describe())
