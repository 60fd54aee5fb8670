"""Output safety: one writer per target folder, a killed writer's leftovers cleaned by the next
run, an existing folder never lost, and written files following the user's umask."""

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_imgen.convert.converter import convert
from mlx_imgen.convert.writer import write_pipeline
from mlx_imgen.io import TargetBusy, atomic_write_bytes, exclusive_target

# a child process that holds the lock on argv[1] until its stdin closes
HOLD_LOCK = """
import sys
from mlx_imgen.io import exclusive_target
with exclusive_target(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""

# a child that writes a pipeline folder into argv[1] and stops (to be killed) at argv[2]:
# "save" while the weights are being written, "swap" after the old folder is moved aside
KILLED_WRITER = """
import os, sys, time
from pathlib import Path
import mlx.core as mx
from mlx_imgen.convert import writer

def stop():
    print("stopped", flush=True)
    time.sleep(120)

if sys.argv[2] == "save":
    real_save = writer.save_weights
    def save_weights(folder, *args):
        real_save(folder, *args)
        stop()
    writer.save_weights = save_weights
else:
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if ".old-" in str(dst):
            stop()
    os.rename = rename
writer.write_pipeline(Path(sys.argv[1]), {"family": "child"},
                      {"transformer": ({"who": "child"}, {"w": mx.full((4,), 7.0)})}, force=True)
"""


def components(value: float) -> dict:
    return {"transformer": ({"value": value}, {"w": mx.full((4,), value)})}


def read_value(folder: Path) -> float:
    return json.loads((folder / "transformer" / "config.json").read_text())["value"]


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def lock_holder(tmp_path):
    """Start a process holding the lock on a target; yields (process, target)."""
    procs = []

    def start(target: Path):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(target)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc
    yield start
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_second_writer_of_the_same_folder_is_refused_naming_the_holder(tmp_path, lock_holder):
    out = tmp_path / "out"
    proc = lock_holder(out)
    with pytest.raises(TargetBusy, match=rf"another mlx-imgen process is converting into "
                                         rf"{out} \(pid {proc.pid}\); wait for it or choose"):
        write_pipeline(out, {}, components(1.0))
    assert not out.exists()
    proc.stdin.close()
    proc.wait(timeout=30)
    # released: the lock file is gone and the folder can be written
    assert hidden(tmp_path) == []
    write_pipeline(out, {}, components(1.0))
    assert read_value(out) == 1.0 and hidden(tmp_path) == []


def test_convert_takes_the_lock_before_it_reads_or_downloads_anything(tmp_path, lock_holder):
    out = tmp_path / "out"
    proc = lock_holder(out)
    # neither the missing file nor the hub is reached: the lock is checked first
    with pytest.raises(TargetBusy, match=f"pid {proc.pid}"):
        convert("llamagen-c2i-b-256", out)
    with pytest.raises(TargetBusy):
        convert(str(tmp_path / "missing.pt"), out)


def test_cli_loser_gets_one_line_and_exit_2(tmp_path, lock_holder):
    out = tmp_path / "out"
    proc = lock_holder(out)
    result = subprocess.run([sys.executable, "-m", "mlx_imgen.cli", "convert", "x.pt", "--out",
                             str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"another mlx-imgen process is converting into {out} (pid {proc.pid})" in \
        " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_the_lock_is_reentrant_within_a_process_and_distinct_per_target(tmp_path):
    with exclusive_target(tmp_path / "a"):
        with exclusive_target(tmp_path / "a"), exclusive_target(tmp_path / "b"):
            assert hidden(tmp_path) == [".a.lock", ".b.lock"]
        write_pipeline(tmp_path / "a", {}, components(2.0))  # inside the caller's lock
        assert ".a.lock" in hidden(tmp_path)
    assert hidden(tmp_path) == []


def test_a_missing_parent_folder_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="does not exist; create it first"):
        convert("llamagen-c2i-b-256", tmp_path / "no" / "out")


def run_killed_writer(out: Path, where: str) -> int:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out), where],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "stopped"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return proc.pid


def test_a_killed_conversions_partial_folder_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    pid = run_killed_writer(out, "save")
    # what the kill left: a half-written folder and a lock file nobody holds
    assert f".out.partial-{pid}" in hidden(tmp_path)
    assert (tmp_path / f".out.partial-{pid}" / "transformer" / "model.safetensors").is_file()
    assert not out.exists()
    write_pipeline(out, {}, components(3.0))
    assert hidden(tmp_path) == []
    assert read_value(out) == 3.0
    assert np.array(mx.load(str(out / "transformer" / "model.safetensors"))["w"]).tolist() == [3.0] * 4


def test_a_replace_killed_between_its_renames_loses_nothing_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    write_pipeline(out, {}, components(1.0))
    pid = run_killed_writer(out, "swap")
    # the kill came after the old folder was moved aside and before the new one moved in
    assert not out.exists() and f".out.old-{pid}" in hidden(tmp_path)
    with exclusive_target(out):  # the next run puts the user's folder back
        assert read_value(out) == 1.0
    assert hidden(tmp_path) == []
    write_pipeline(out, {}, components(4.0), force=True)
    assert read_value(out) == 4.0 and hidden(tmp_path) == []


def test_an_old_folder_left_by_a_kill_after_the_swap_is_removed(tmp_path):
    out = tmp_path / "out"
    write_pipeline(out, {}, components(5.0))
    stale = tmp_path / ".out.old-999999"
    (stale / "transformer").mkdir(parents=True)
    other = tmp_path / ".outer.old-999999"  # another target's: not ours to touch
    other.mkdir()
    write_pipeline(out, {}, components(6.0), force=True)
    assert read_value(out) == 6.0
    assert hidden(tmp_path) == [".outer.old-999999"]


def test_a_failed_write_keeps_the_existing_folder(tmp_path):
    out = tmp_path / "out"
    write_pipeline(out, {}, components(1.0))
    with pytest.raises(ValueError, match="already exists; pass --force"):
        write_pipeline(out, {}, components(2.0))
    with pytest.raises(TypeError):
        write_pipeline(out, {}, {"transformer": ({"value": object()}, {})}, force=True)
    assert read_value(out) == 1.0 and hidden(tmp_path) == []


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask: int):
        os.umask(mask)
    yield set_mask
    os.umask(previous)


def modes(root: Path) -> set[int]:
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    return {stat.S_IMODE(p.stat().st_mode) | (0o1000 if p.is_dir() else 0) for p in paths}


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    png = atomic_write_bytes(tmp_path / "image.png", b"\x89PNG")
    folder = write_pipeline(tmp_path / "out", {}, components(1.0))
    assert modes(png) == {file_mode}
    assert modes(folder) == {file_mode, dir_mode | 0o1000}


def test_a_file_in_the_way_is_refused_even_with_force(tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a folder; choose another --out"):
        write_pipeline(tmp_path / "out", {}, components(1.0), force=True)
    assert (tmp_path / "out").read_text() == "mine" and hidden(tmp_path) == []


def test_a_second_process_asking_for_an_alias_waits_for_the_first_conversion(
        tmp_path, lock_holder, monkeypatch):
    """Two `generate ALIAS` runs at once: the second waits for the first one's conversion into
    the shared cache and reuses it instead of failing or converting again."""
    import threading

    from mlx_imgen import loading
    from mlx_imgen.convert import converter

    monkeypatch.setenv("MLX_IMGEN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    folder = tmp_path / "cache" / "llamagen-c2i-b-256-float32"
    proc = lock_holder(folder)
    converted = []
    monkeypatch.setattr(converter, "convert", lambda *a, **k: converted.append(a))
    found = []
    waiter = threading.Thread(target=lambda: found.append(
        loading.resolve("llamagen-c2i-b-256", dtype="float32")))
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and not found, "resolve did not wait for the lock holder"
    # the holder finishes its conversion, then lets go
    folder.mkdir()
    (folder / loading.INDEX_FILE).write_text("{}")
    proc.stdin.close()
    proc.wait(timeout=30)
    waiter.join(timeout=30)
    assert found == [folder] and converted == []
