"""What `python -m mlx_imgen.blas` puts in the environment of the process it re-executes: the
malloc settings that keep MLX's large buffers (unless opted out, or set by the user)."""

import os
import subprocess
import sys

import pytest

from mlx_imgen.blas import MALLOC_ALLOCATOR

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the re-exec and glibc's malloc are Linux's")
SHOW = "import json, os; print(json.dumps({k: os.environ.get(k) for k in %r}))" % (
    sorted(MALLOC_ALLOCATOR),)


def child_malloc_settings(**changes) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLX_IMGEN_") and k not in MALLOC_ALLOCATOR and k != "LD_PRELOAD"}
    env.update(changes)
    out = subprocess.run([sys.executable, "-m", "mlx_imgen.blas", sys.executable, "-c", SHOW],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    import json
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_reexec_keeps_large_buffers_unless_told_otherwise():
    assert child_malloc_settings() == MALLOC_ALLOCATOR
    assert set(child_malloc_settings(MLX_IMGEN_MALLOC="default").values()) == {None}
    mine = child_malloc_settings(MALLOC_TOP_PAD_="12345")
    assert mine["MALLOC_TOP_PAD_"] == "12345"
    assert mine["MALLOC_TRIM_THRESHOLD_"] == MALLOC_ALLOCATOR["MALLOC_TRIM_THRESHOLD_"]
