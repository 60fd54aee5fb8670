"""S-size grid forwards and the hot CPU ops, before and after the fast CPU path, interleaved.

Three MLX setups, each in its own child process with the same verified BLAS preloaded:
  plain           MLX_IMGEN_FAST_CPU=0 and MLX's own runtime-compiler flags (the code before)
  fused           the fused activations/softmax, MLX's own compiler flags
  fused+flags     the fused formulations and the verified compiler flags (the default now)
and torch on one thread in a child of its own without the preload (ops only). Rounds run the
setups in turn (A B C A B C ...), so drift hits all alike; figures are ms, min and median.
Run: .venv/bin/python benchmarks/cpu_kernels.py [--rounds 3 --repeats 5]

--depthwise instead times the depthwise convs (MLX's grouped conv, nn.DepthwiseConv2d's CPU
form, torch's depthwise conv2d on 2 threads in its own process) at Sana's Mix-FFN and aMUSEd's
ConvNeXt maps, and one whole Sana-0.6B transformer pass at 512 px with each conv (random
weights, batch 2, a 300-token caption with a mask), the two alternating within one process.
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


# (label, batch, height, width, channels, kernel)
DEPTHWISE_CASES = [
    ("Sana-0.6B Mix-FFN", 2, 16, 16, 5760, 3),
    ("Sana-1.6B Mix-FFN", 2, 32, 32, 11200, 3),
    ("aMUSEd-512 ConvNeXt", 2, 32, 32, 768, 3),
]

DEPTHWISE_MLX_CHILD = r"""
import json, sys, time
import mlx.core as mx, mlx.nn as nn
from mlx_imgen.families.sana import config_for
from mlx_imgen.nn import DepthwiseConv2d
from mlx_imgen.sana import SanaTransformer
repeats, cases = int(sys.argv[1]), json.loads(sys.argv[2])
res = {}

def alternate(label, fns):
    # the setups take turns within each repeat, so drift hits both alike
    for fn in fns.values():
        mx.eval(fn()); mx.eval(fn())
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter(); mx.eval(fn())
            elapsed = (time.perf_counter() - start) * 1e3
            res.setdefault(label, {}).setdefault(name, []).append(elapsed)

for label, b, h, w, c, k in cases:
    mx.random.seed(0)
    conv = DepthwiseConv2d(c, k)
    x = mx.random.normal((b, h, w, c)); mx.eval(x, conv.parameters())
    alternate(f"{label} ({b}, {h}, {w}, {c}) k{k}",
              {"MLX grouped conv": lambda: nn.Conv2d.__call__(conv, x),
               "DepthwiseConv2d": lambda: conv(x)})

cfg = config_for("0.6b", 512)
mx.random.seed(0)
model = SanaTransformer(cfg); mx.eval(model.parameters())
side = cfg.sample_size
latents = mx.random.normal((2, side, side, cfg.in_channels))
context = mx.random.normal((2, 300, cfg.caption_channels))
mask = (mx.arange(300)[None] < mx.array([[120], [300]])).astype(mx.int32)
timesteps = mx.array([0.5, 0.5])
forward = lambda: model(latents, timesteps=timesteps, context=context, context_mask=mask)

def grouped_call(self, x):
    return nn.Conv2d.__call__(self, x)

def before():
    fast, DepthwiseConv2d.__call__ = DepthwiseConv2d.__call__, grouped_call
    try:
        return forward()
    finally:
        DepthwiseConv2d.__call__ = fast

alternate(f"Sana-0.6B transformer, 512 px, batch 2, 300-token caption ({cfg.num_layers} blocks)",
          {"MLX grouped conv": before, "DepthwiseConv2d": forward})
print(json.dumps(res))
"""

DEPTHWISE_TORCH_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(2)
repeats, cases = int(sys.argv[1]), json.loads(sys.argv[2])
res = {}
torch.manual_seed(0)
with torch.no_grad():
    for label, b, h, w, c, k in cases:
        conv = torch.nn.Conv2d(c, c, k, padding=k // 2, groups=c)
        x = torch.randn(b, c, h, w)
        conv(x); conv(x); out = []
        for _ in range(repeats):
            start = time.perf_counter(); conv(x); out.append((time.perf_counter() - start) * 1e3)
        res[f"{label} ({b}, {h}, {w}, {c}) k{k}"] = {"torch 2 threads": out}
print(json.dumps(res))
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


def run_child(script: str, env: dict, repeats: int, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, str(repeats), *extra], env=env, check=True,
                          capture_output=True, text=True, timeout=1800)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depthwise", action="store_true",
                        help="time the depthwise convs and a Sana-0.6B pass instead")
    args = parser.parse_args()
    from mlx_imgen import blas

    envs = setups()
    torch_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if args.depthwise:
        depthwise(envs, torch_env, args.rounds, args.repeats)
        return
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


def depthwise(envs: dict, torch_env: dict, rounds: int, repeats: int) -> None:
    """MLX (the default setup: fused formulations and verified flags) and torch, in turn."""
    env = envs.get("fused+flags", envs["fused"])
    cases = json.dumps(DEPTHWISE_CASES)
    times: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for script, child_env in ((DEPTHWISE_MLX_CHILD, env), (DEPTHWISE_TORCH_CHILD, torch_env)):
            for case, by_setup in run_child(script, child_env, repeats, cases).items():
                for name, values in by_setup.items():
                    times.setdefault(case, {}).setdefault(name, []).extend(values)
    names = ["MLX grouped conv", "DepthwiseConv2d", "torch 2 threads"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"MLX compiler flags: {env.get('MLX_IMGEN_JIT_ACTIVE', 'unverified')}; float32")
    print(f"{rounds} rounds x {repeats} repeats; ms min / median; "
          "ratio = grouped / DepthwiseConv2d medians")
    print("| case | " + " | ".join(names) + " | grouped / ours |")
    print("|---" * (len(names) + 2) + "|")
    for case, by_setup in times.items():
        cells = [f"{min(v):.1f} / {statistics.median(v):.1f}" if (v := by_setup.get(n)) else "-"
                 for n in names]
        ratio = (statistics.median(by_setup["MLX grouped conv"])
                 / statistics.median(by_setup["DepthwiseConv2d"]))
        print(f"| {case} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()
