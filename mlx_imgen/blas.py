"""An optimized BLAS for MLX's CPU backend on Linux, whose wheel links the slow reference BLAS.

The `mlx-imgen` entry point finds OpenBLAS, checks it numerically against numpy in a child
process (a library built for another CPU can crash or be wrong), and re-executes itself with the
library preloaded. Set MLX_IMGEN_BLAS=reference to opt out, or to a library path to choose one.

The same re-exec gives MLX's runtime compiler (which runs a plain `g++ -O3` found on PATH when
`mx.compile` fuses elementwise work on the CPU) vectorising flags, through a `g++` wrapper put
first on PATH, and a kernel cache of its own (MLX caches compiled kernels under TMPDIR by name
only). The flags are checked numerically, infinities and NaN included, in a child process first.
Set MLX_IMGEN_JIT_FLAGS=plain to opt out, or to other flags to use those.

It also tells glibc's malloc to keep large freed blocks (MALLOC_ALLOCATOR below): MLX's CPU
backend keeps no buffer cache, so every large array was a fresh mmap whose pages the kernel
zeroes on first touch, and every free gave them back. Set MLX_IMGEN_MALLOC=default to opt out;
a MALLOC_* variable set by the user wins.
"""

import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ENV_CHOICE = "MLX_IMGEN_BLAS"
ENV_ACTIVE = "MLX_IMGEN_BLAS_ACTIVE"
ENV_JIT = "MLX_IMGEN_JIT_FLAGS"
ENV_JIT_ACTIVE = "MLX_IMGEN_JIT_ACTIVE"
# -march=native: the CPU's vector instructions (MLX's wheel targets baseline x86-64).
# -fno-math-errno: floor and friends become instructions instead of libm calls.
# -fno-trapping-math: lets g++ turn MLX's NaN/overflow selects into blends, so loops vectorise.
# max-inline-insns-auto: MLX's exp/sigmoid templates get inlined; otherwise the call binds to
# libmlx's exported scalar copy, built without FMA. Not -ffast-math: it breaks inf and NaN.
JIT_FLAGS = "-march=native -fno-math-errno -fno-trapping-math --param max-inline-insns-auto=400"
ENV_MALLOC = "MLX_IMGEN_MALLOC"
# arrays up to 4 GB come from the heap, which is trimmed only past 4 GB free, and grows 1 GB at
# a time. On the 2-core EPYC: x * b + 1 over 92 MB from 57 to 16 ms; aMUSEd-256's VQ decode
# plus a Sana-0.6B pass, whole process, 16% less wall time at the same peak RSS (farm-bench).
MALLOC_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "4000000000",
                    "MALLOC_TRIM_THRESHOLD_": "4000000000",
                    "MALLOC_TOP_PAD_": "1000000000"}
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


JIT_PROBE = """
import math, numpy as np, mlx.core as mx
x = np.concatenate([np.random.default_rng(0).standard_normal(4093, dtype=np.float32) * 30,
                    np.array([0.0, -0.0, 1e-30, 1e4, -1e4, 100.0, -100.0, np.inf, -np.inf, np.nan],
                             dtype=np.float32)])
fused = mx.compile(lambda v: v / (1 + mx.exp(-v)) + mx.sigmoid(v) * mx.maximum(v, -5.0))
with mx.stream(mx.cpu):
    out = np.array(fused(mx.array(x)))
with np.errstate(over="ignore", invalid="ignore"):
    d = x.astype(np.float64)
    want = d / (1 + np.exp(-d)) + 1 / (1 + np.exp(-d)) * np.maximum(d, -5.0)
close = np.isclose(out, want, rtol=1e-5, atol=1e-6) | (np.isnan(out) & np.isnan(want))
raise SystemExit(0 if close.all() else 3)
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


def _run_probe(stamp: str, script: str, env: dict) -> bool:
    """Run `script` in a child process with `env`; success is remembered under `stamp`."""
    cache = _cache_file()
    try:
        cached = json.loads(cache.read_text())
        if stamp in cached:
            return cached[stamp]
    except (OSError, ValueError):
        cached = {}
    try:
        ok = subprocess.run([sys.executable, "-c", script], env=env, timeout=300,
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


def probe(library: str) -> bool:
    """Whether MLX matmul agrees with numpy (relative error < 1e-4) with `library` preloaded."""
    import mlx.core as mx

    stamp = f"{library}:{os.path.getmtime(library)}:{mx.__version__}"
    return _run_probe(stamp, PROBE, dict(os.environ, LD_PRELOAD=library))


def _cpu_signature() -> str:
    """The CPU model and flags, which -march=native compiles for."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return " ".join(sorted(set(lines)))


def jit_environment() -> dict[str, str] | None:
    """PATH and TMPDIR giving MLX's runtime compiler the chosen flags, once verified; else None."""
    import mlx.core as mx

    flags = os.environ.get(ENV_JIT, JIT_FLAGS)
    compiler = shutil.which("g++")
    if flags == "plain" or compiler is None:
        return None
    key = f"{compiler}|{flags}|{mx.__version__}|{_cpu_signature()}"
    root = _cache_file().parent / "jit" / hashlib.sha256(key.encode()).hexdigest()[:16]
    wrapper = root / "bin" / "g++"
    try:
        wrapper.parent.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(compiler)} "$@" {flags}\n')
        wrapper.chmod(0o755)
    except OSError:
        return None
    env = {"PATH": f"{wrapper.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TMPDIR": str(root / "tmp"), ENV_JIT_ACTIVE: flags}
    return env if _run_probe(f"jit:{root.name}", JIT_PROBE, dict(os.environ, **env)) else None


def ensure_optimized_blas() -> None:
    """Re-execute this process with a verified OpenBLAS preloaded and verified runtime-compiler
    flags, where those apply."""
    if not sys.platform.startswith("linux") or ENV_ACTIVE in os.environ:
        return
    env = dict(os.environ)
    env[ENV_ACTIVE] = "reference"
    library = None if os.environ.get(ENV_CHOICE) == "reference" else find_library()
    if library is not None and probe(library):
        env[ENV_ACTIVE] = library
        env["LD_PRELOAD"] = ":".join(p for p in (library, os.environ.get("LD_PRELOAD")) if p)
    env.update(jit_environment() or {ENV_JIT_ACTIVE: "plain"})
    malloc = {} if os.environ.get(ENV_MALLOC) == "default" else \
        {k: v for k, v in MALLOC_ALLOCATOR.items() if k not in os.environ}
    env.update(malloc)
    if env[ENV_ACTIVE] == "reference" and env[ENV_JIT_ACTIVE] == "plain" and not malloc:
        os.environ.update({ENV_ACTIVE: "reference", ENV_JIT_ACTIVE: "plain"})
        return
    os.execve(sys.executable, list(sys.orig_argv), env)


def describe_jit() -> str:
    """The flags MLX's runtime compiler adds to its own `g++ -O3` in this process."""
    flags = os.environ.get(ENV_JIT_ACTIVE, "plain")
    return "g++ -O3 (MLX's defaults)" if flags == "plain" else f"g++ -O3 {flags}"


def describe() -> str:
    """Which BLAS MLX's CPU matmuls go through in this process."""
    if sys.platform == "darwin":
        return "Accelerate"
    active = os.environ.get(ENV_ACTIVE)
    preload = os.environ.get("LD_PRELOAD", "")
    if active and active != "reference" and active in preload:
        library = f"OpenBLAS ({active})"
    elif not active and "openblas" in preload.lower():
        library = f"OpenBLAS ({preload})"
    else:
        library = "reference BLAS (bundled with the mlx wheel)"
    return f"{library}; runtime compiler {describe_jit()}"


if __name__ == "__main__":
    # `python -m mlx_imgen.blas CMD ...` runs CMD with the verified BLAS preloaded (make test).
    ensure_optimized_blas()
    if len(sys.argv) > 1:
        os.execvp(sys.argv[1], sys.argv[1:])
    print(describe())
