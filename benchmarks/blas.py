"""Matmul GFLOP/s of MLX's CPU backend with its bundled reference BLAS and with the OpenBLAS that
`mlx-imgen` preloads, beside numpy and torch. Each MLX setup runs in its own child process."""

import json
import os
import subprocess
import sys
import time

SIZE = 1024
CHILD = r"""
import json, sys, time
import mlx.core as mx
size, dtype = int(sys.argv[1]), getattr(mx, sys.argv[2])
a = mx.random.normal((size, size)).astype(dtype)
b = mx.random.normal((size, size)).astype(dtype)
mx.eval(a @ b)
best = float("inf")
for _ in range(3):
    t = time.perf_counter(); mx.eval(a @ b); best = min(best, time.perf_counter() - t)
print(json.dumps(2 * size ** 3 / best / 1e9))
"""


def mlx_gflops(dtype: str, blas_choice: str | None) -> float:
    from mlx_imgen import blas

    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop(blas.ENV_ACTIVE, None)
    if blas_choice:
        library = blas.find_library()
        if library is None or not blas.probe(library):
            return float("nan")
        env["LD_PRELOAD"] = library
    out = subprocess.run([sys.executable, "-c", CHILD, str(SIZE), dtype], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout)


def numpy_gflops() -> float:
    import numpy as np

    a = np.random.default_rng(0).standard_normal((SIZE, SIZE), dtype=np.float32)
    a @ a
    best = min(_time(lambda: a @ a) for _ in range(3))
    return 2 * SIZE ** 3 / best / 1e9


def torch_gflops() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    a = torch.randn(SIZE, SIZE)
    a @ a
    best = min(_time(lambda: a @ a) for _ in range(3))
    return 2 * SIZE ** 3 / best / 1e9


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def blas_table() -> list[dict]:
    from mlx_imgen import blas

    library = blas.find_library()
    rows = [
        {"setup": "MLX fp32, reference BLAS (stock wheel)", "gflops": mlx_gflops("float32", None)},
        {"setup": f"MLX fp32, OpenBLAS preloaded ({library})", "gflops": mlx_gflops("float32", "openblas")},
        {"setup": "MLX bf16 (does not go through BLAS)", "gflops": mlx_gflops("bfloat16", "openblas")},
        {"setup": "numpy fp32", "gflops": numpy_gflops()},
    ]
    torch_value = torch_gflops()
    if torch_value is not None:
        rows.append({"setup": "torch fp32", "gflops": torch_value})
    return rows


if __name__ == "__main__":
    for row in blas_table():
        print(f"{row['setup']:60s} {row['gflops']:8.1f} GFLOP/s")
