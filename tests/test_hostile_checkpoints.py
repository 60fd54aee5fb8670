"""Every hostile checkpoint of the corpus is refused with the reader's one error, runs no payload,
and stays within 1 GB and 10 s; the CLI turns a sample of them into exit 2 and one line."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from hostile_checkpoints import GOOD, FLOATS, corpus, pkl, tensor, glob, state, write_zip
from mlx_imgen.weights import torch_pickle
from mlx_imgen.weights.readers import read_state_dict

# Run in a child with an address-space cap, so a bomb fails the test instead of the machine,
# and a crash (segfault) names the case it died on instead of killing pytest.
RUNNER = r"""
import json, re, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))


def peak_mb():
    # this process's own high-water mark: Linux's ru_maxrss also keeps the parent's (pytest's)
    # from before the exec, which grows with every test module collected
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s*(\d+) kB", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from mlx_imgen.weights.readers import read_state_dict
from mlx_imgen.weights.torch_pickle import CheckpointError
for name, path in json.loads(sys.argv[1]).items():
    print(json.dumps({"case": name, "started": True}), flush=True)
    start = time.perf_counter()
    try:
        for value in read_state_dict(path).values():
            value.numpy()
        outcome, message = "accepted", ""
    except CheckpointError as err:
        outcome, message = "refused", str(err)
    except BaseException as err:
        outcome, message = type(err).__name__, str(err)[:300]
    print(json.dumps({"case": name, "outcome": outcome, "message": message,
                      "seconds": time.perf_counter() - start,
                      "peak_mb": peak_mb()}),
          flush=True)
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "pwned"
    return corpus(folder / "corpus", marker), marker


def test_every_hostile_checkpoint_is_refused_cleanly_within_bounds(hostile):
    cases, marker = hostile
    assert len(cases) >= 80
    run = subprocess.run([sys.executable, "-c", RUNNER, json.dumps({k: str(v) for k, v in
                                                                     cases.items()})],
                         capture_output=True, text=True, timeout=900)
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    results = {r["case"]: r for r in lines if "outcome" in r}
    assert run.returncode == 0, (f"the reader crashed (exit {run.returncode}) on "
                                 f"{lines[-1]['case'] if lines else '?'}: {run.stderr[-2000:]}")
    assert set(results) == set(cases)
    bad = {name: (r["outcome"], r["message"]) for name, r in results.items()
           if r["outcome"] != "refused"}
    assert not bad
    for name, r in results.items():
        message = r["message"]
        assert str(cases[name]) in message and "\n" not in message, (name, message)
        assert ". " not in message and "Traceback" not in message, (name, message)
        assert r["seconds"] < 10, (name, r["seconds"])
    assert max(r["peak_mb"] for r in results.values()) < 1024
    assert not marker.exists()


@pytest.mark.parametrize("case", ["global-os.system", "nested-lists-100000",
                                  "deflated-overlapping-members"])
def test_cli_refuses_hostile_checkpoint_with_one_line_and_exit_2(hostile, tmp_path, case):
    cases, marker = hostile
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "mlx_imgen.cli", "convert", str(cases[case]),
                          "--family", "llamagen", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "Traceback" not in run.stderr and str(cases[case].name) in run.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
    assert not marker.exists()


def snapshot():
    """Everything a BUILD could have touched: attributes of each allow-listed global."""
    def attrs(value):
        return {k: repr(v) for k, v in sorted(getattr(value, "__dict__", {}).items())
                if k != "__weakref__"} | {"defaults": repr(getattr(value, "__defaults__", None)),
                                          "repr": repr(value)}
    return {name: attrs(value) for name, value in torch_pickle._SAFE_GLOBALS.items()}


def test_hostile_build_attempts_leave_the_reader_unchanged(hostile, tmp_path):
    cases, _ = hostile
    good = tmp_path / "good.pt"
    write_zip(good, pkl(state(("w", tensor()), ("v", tensor(size=(2, 2), stride=(1, 2))))))
    before, expected = snapshot(), {k: v.numpy() for k, v in read_state_dict(good).items()}

    for name in [n for n in cases if n.startswith(("build-", "setitems-", "appends-",
                                                   "additems-"))]:
        with pytest.raises(torch_pickle.CheckpointError):
            torch_pickle.load_pt(cases[name])

    assert snapshot() == before
    loaded = {k: v.numpy() for k, v in read_state_dict(good).items()}
    assert loaded.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(loaded[key], expected[key], strict=True)


def test_hand_built_good_checkpoint_loads(tmp_path):
    # the corpus's own building blocks make a valid file: the refusals are not accidents
    path = tmp_path / "good.pt"
    write_zip(path, GOOD)
    np.testing.assert_array_equal(torch_pickle.load_pt(path)["w"].numpy(),
                                  np.frombuffer(FLOATS, np.float32))


def test_small_expanded_views_and_deflated_members_stay_readable(tmp_path):
    # the bounds leave room for what real files hold: a stride-0 buffer, a re-zipped archive
    path = tmp_path / "expanded.pt"
    write_zip(path, pkl(state(("w", tensor(size=(1000, 4), stride=(0, 1))))),
              compression=zipfile.ZIP_DEFLATED)
    arr = torch_pickle.load_pt(path)["w"].numpy()
    assert arr.shape == (1000, 4) and (arr == np.arange(4, dtype=np.float32)).all()
    assert glob("torch", "Tensor").startswith(b"c")
