"""Fuzzing the public reader: thousands of mutated .pt and .safetensors files (fixed seed) may
only ever raise the reader's own CheckpointError, lazily loaded tensors included."""

import json
import subprocess
import sys

import torch
from safetensors.numpy import save_file

CASES_PER_FORMAT = {".pt": 2500, ".safetensors": 1500}

FUZZER = r"""
import json, random, sys, time
from pathlib import Path
import mlx.core as mx
from mlx_imgen.weights.readers import read_state_dict
from mlx_imgen.weights.torch_pickle import CheckpointError, LazyTensor

def mutate(data, rng):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind, at = rng.randrange(5), rng.randrange(len(data))
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:
            del data[rng.randint(1, len(data)):]
        elif kind == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 3:
            n = rng.randint(1, 256)
            data[at:at] = data[rng.randrange(len(data)):][:n]
        else:
            data[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                          b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"])
    return bytes(data)

base, folder, counts = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
rng, failures, outcomes = random.Random(0), [], {}
for suffix, count in counts.items():
    original = (base / f"model{suffix}").read_bytes()
    for i in range(count):
        path = folder / f"fuzz{suffix}"
        path.write_bytes(mutate(original, rng))
        try:
            for value in read_state_dict(path).values():
                value.numpy() if isinstance(value, LazyTensor) else mx.eval(value)
            outcome = "loaded"
        except CheckpointError:
            outcome = "refused"
        except BaseException as err:
            outcome = "other"
            failures.append(f"{suffix} #{i}: {type(err).__name__}: {str(err)[:200]}")
            (folder / f"failure{len(failures)}{suffix}").write_bytes(path.read_bytes())
        outcomes[f"{suffix} {outcome}"] = outcomes.get(f"{suffix} {outcome}", 0) + 1
print(json.dumps({"failures": failures[:20], "outcomes": outcomes}))
"""


def llamagen_like_state():
    """A few tensors with LlamaGen's names, dtypes and view layouts."""
    gen = torch.Generator().manual_seed(0)
    wqkv = torch.randn(24, 8, generator=gen)
    return {"model": {
        "tok_embeddings.weight": torch.randn(16, 8, generator=gen),
        "cls_embedding.embedding_table.weight": torch.randn(5, 8, generator=gen).half(),
        "layers.0.attention.wqkv.weight": wqkv,
        "layers.0.attention.wo.weight": wqkv[:8].t(),
        "layers.0.attention_norm.weight": torch.ones(8, dtype=torch.bfloat16),
        "freqs_cis": torch.randn(4, 2, 2, generator=gen)}, "steps": 7, "args": {"lr": 1e-4}}


def test_mutated_checkpoints_raise_only_the_readers_error(tmp_path):
    state = llamagen_like_state()
    torch.save(state, tmp_path / "model.pt")
    save_file({k: (v.float() if v.dtype == torch.bfloat16 else v).contiguous().numpy()
               for k, v in state["model"].items()}, str(tmp_path / "model.safetensors"))
    work = tmp_path / "work"
    work.mkdir()

    run = subprocess.run([sys.executable, "-c", FUZZER, str(tmp_path), str(work),
                          json.dumps(CASES_PER_FORMAT)], capture_output=True, text=True,
                         timeout=600)

    assert run.returncode == 0, f"the fuzz run crashed (exit {run.returncode}): {run.stderr[-2000:]}"
    report = json.loads(run.stdout.splitlines()[-1])
    print(report["outcomes"])
    assert report["failures"] == [], report
    # the mutations reach both outcomes, so the fuzzing exercises the readers' insides
    for suffix in CASES_PER_FORMAT:
        assert report["outcomes"].get(f"{suffix} refused", 0) > 0
        assert report["outcomes"].get(f"{suffix} loaded", 0) > 0
    assert sum(report["outcomes"].values()) == sum(CASES_PER_FORMAT.values())
