"""S-size grid forwards and the hot CPU ops, before and after the fast CPU path, interleaved.

Three MLX setups, each in its own child process with the same verified BLAS preloaded:
  plain           MLX_IMGEN_FAST_CPU=0 and MLX's own runtime-compiler flags (the code before)
  fused           the fused activations/softmax, MLX's own compiler flags
  fused+flags     the fused formulations and the verified compiler flags (the default now)
and torch on one thread in a child of its own without the preload (ops only). Rounds run the
setups in turn (A B C A B C ...), so drift hits all alike; figures are ms, min and median.
Run: .venv/bin/python benchmarks/cpu_kernels.py [--rounds 3 --repeats 5]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

MLX_CHILD = r"""
import json, sys, time, math
import mlx.core as mx, mlx.nn as nn
from mlx_imgen.backbone import Transformer
from mlx_imgen.grid import grid_config, latent_shape
from mlx_imgen.nn.activations import gelu_tanh, softmax_fused, use_fast_cpu_softmax
from mlx_imgen.nn.attention import attention_cpu
repeats = int(sys.argv[1])

def timed(fn):
    mx.eval(fn()); mx.eval(fn())
    out = []
    for _ in range(repeats):
        start = time.perf_counter(); mx.eval(fn()); out.append((time.perf_counter() - start) * 1e3)
    return out

res = {}
mx.random.seed(0)
x = mx.random.normal((8, 256, 3072)); scores = mx.random.normal((8, 6, 257, 257)) * 3
q = mx.random.normal((8, 6, 257, 64)); h = mx.random.normal((8, 257, 384))
w, b, fc1 = mx.ones((384,)), mx.zeros((384,)), mx.random.normal((3072, 384)) * 0.05
fast = use_fast_cpu_softmax()
res["op gelu_tanh (8,256,3072)"] = timed(lambda: gelu_tanh(x))
res["op softmax (8,6,257,257)"] = timed(lambda: softmax_fused(scores) if fast else mx.softmax(scores, axis=-1))
res["op attention (8,6,257,64)"] = timed(
    lambda: attention_cpu(q, q, q, 0.125) if fast else mx.fast.scaled_dot_product_attention(q, q, q, scale=0.125))
res["op layer_norm (8,257,384)"] = timed(lambda: mx.fast.layer_norm(h, w, b, 1e-6))
res["op matmul (8*257,384)x(384,3072)"] = timed(lambda: h @ fc1.T)
for paradigm in ("masked-token", "diffusion"):
    cfg = grid_config(paradigm, "S")
    mx.random.seed(0)
    model = Transformer(cfg); mx.eval(model.parameters())
    for batch in (1, 4):
        labels = mx.arange(batch) % 1000
        if cfg.input == "tokens":
            inputs = (mx.random.randint(0, cfg.vocab_size, (batch, cfg.num_tokens)), labels)
        else:
            inputs = (mx.random.normal((batch, *latent_shape(cfg))), labels, mx.full((batch,), 0.5))
        res[f"forward {paradigm} S batch {batch}"] = timed(lambda: model(*inputs))
print(json.dumps(res))
"""

TORCH_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
repeats = int(sys.argv[1])
def timed(fn):
    fn(); fn(); out = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); out.append((time.perf_counter() - start) * 1e3)
    return out
torch.manual_seed(0)
x = torch.randn(8, 256, 3072); scores = torch.randn(8, 6, 257, 257) * 3
q = torch.randn(8, 6, 257, 64); h = torch.randn(8, 257, 384)
w, b, fc1 = torch.ones(384), torch.zeros(384), torch.randn(3072, 384) * 0.05
F = torch.nn.functional
print(json.dumps({
    "op gelu_tanh (8,256,3072)": timed(lambda: F.gelu(x, approximate="tanh")),
    "op softmax (8,6,257,257)": timed(lambda: torch.softmax(scores, -1)),
    "op attention (8,6,257,64)": timed(lambda: F.scaled_dot_product_attention(q, q, q, scale=0.125)),
    "op layer_norm (8,257,384)": timed(lambda: F.layer_norm(h, (384,), w, b, 1e-6)),
    "op matmul (8*257,384)x(384,3072)": timed(lambda: h @ fc1.T),
}))
"""


def setups() -> dict[str, dict]:
    from mlx_imgen import blas

    base = {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", blas.ENV_ACTIVE, blas.ENV_JIT_ACTIVE)}
    base[blas.ENV_ACTIVE] = "reference"
    base[blas.ENV_JIT_ACTIVE] = "plain"
    base["PATH"] = os.pathsep.join(p for p in base.get("PATH", "").split(os.pathsep)
                                   if f"mlx-imgen{os.sep}jit" not in p)  # MLX's plain g++
    library = blas.find_library()
    if library and blas.probe(library):
        base["LD_PRELOAD"] = base[blas.ENV_ACTIVE] = library
    plain_jit = dict(base, TMPDIR=tempfile.mkdtemp(prefix="mlx-imgen-plain-jit-"))
    flagged = blas.jit_environment()
    out = {"plain": dict(plain_jit, MLX_IMGEN_FAST_CPU="0"),
           "fused": dict(plain_jit, MLX_IMGEN_FAST_CPU="1")}
    if flagged:
        out["fused+flags"] = dict(base, **flagged, MLX_IMGEN_FAST_CPU="1")
    return out


def run_child(script: str, env: dict, repeats: int) -> dict:
    done = subprocess.run([sys.executable, "-c", script, str(repeats)], env=env, check=True,
                          capture_output=True, text=True, timeout=1800)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from mlx_imgen import blas

    envs = setups()
    torch_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    times: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        runs = [(name, MLX_CHILD, env) for name, env in envs.items()]
        runs.append(("torch 1 thread", TORCH_CHILD, torch_env))
        for name, script, env in runs:
            for case, values in run_child(script, env, args.repeats).items():
                times.setdefault(case, {}).setdefault(name, []).extend(values)
    names = [*envs, "torch 1 thread"]
    flags = envs["fused+flags"][blas.ENV_JIT_ACTIVE] if "fused+flags" in envs else "unverified"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"MLX BLAS {envs['plain'][blas.ENV_ACTIVE]}; compiler flags: {flags}")
    print(f"{args.rounds} rounds x {args.repeats} repeats; ms min / median; ratio = plain / fused+flags medians")
    print("| case | " + " | ".join(names) + " | plain / fused+flags |")
    print("|---" * (len(names) + 2) + "|")
    for case, by_setup in times.items():
        cells = [f"{min(v):.2f} / {statistics.median(v):.2f}" if (v := by_setup.get(n)) else "-"
                 for n in names]
        ratio = "-"
        if "plain" in by_setup and "fused+flags" in by_setup:
            ratio = f"{statistics.median(by_setup['plain']) / statistics.median(by_setup['fused+flags']):.2f}"
        print(f"| {case} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
