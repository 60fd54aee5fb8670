"""Safe output: files and folders are written beside their target and renamed into place, so
nothing is left half-written; they follow the user's umask; and a lock keeps two processes
from writing the same target folder."""

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import stat
from pathlib import Path


class TargetBusy(ValueError):
    """Another process holds the lock on the target."""


def _check_parent(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {path}: folder {parent} is not writable; choose another path")
    return parent


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    parent = _check_parent(path)
    while True:
        tmp = parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            # os.open applies the umask to 0o666, as open() does; mkstemp would force 0o600
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


# --- folders -------------------------------------------------------------------------------

_held: dict[Path, int] = {}  # targets this process holds the lock on -> its descriptor


def lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _partial(target: Path) -> Path:
    return target.parent / f".{target.name}.partial-{os.getpid()}"


def _old(target: Path) -> Path:
    return target.parent / f".{target.name}.old-{os.getpid()}"


def _leftovers(target: Path, kind: str) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{kind}-\d+")
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _recover(target: Path) -> None:
    """Undo what a killed writer of `target` left: only called holding the lock, so every
    writer that made these is gone (a live one would hold the lock)."""
    for partial in _leftovers(target, "partial"):
        _remove(partial)
    for old in _leftovers(target, "old"):
        if not target.exists():  # killed between moving the old folder aside and the new in
            os.rename(old, target)
        else:
            _remove(old)


def _follow_umask(folder: Path) -> None:
    """Give every file under `folder` the mode open() gives a new file (0o666 less the umask):
    some writers (MLX's save_safetensors) create theirs 0o644 whatever the umask. The mode is
    read off a probe file, as the umask cannot be read without setting it."""
    probe = folder / ".mode-probe"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)


def _lock_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
    return ""


@contextlib.contextmanager
def exclusive_target(target: str | os.PathLike, *, doing: str = "converting into",
                     instead: str = "choose another --out", wait: bool = False):
    """Hold the lock on `target` (a file `.NAME.lock` beside it) for the duration; refuse at
    once, naming the holder's pid, when another process holds it, or with `wait` block until
    it lets go. On entry, leftovers of a killed writer of `target` are cleaned up. Re-entrant
    within a process."""
    target = Path(os.path.abspath(target))
    if target in _held:
        yield target
        return
    _check_parent(target)
    lock = lock_path(target)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise TargetBusy(f"another mlx-imgen process is {doing} {target}{holder}; wait for "
                             f"it or {instead}") from None
        # a holder that released before we locked removed the file: lock the one on disk
        try:
            mine, on_disk = os.fstat(fd), os.stat(lock)
            if (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _held[target] = fd
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _recover(target)
        yield target
    finally:
        del _held[target]
        # removed while still locked, so no other process can be holding this file
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, *, replace: bool = False):
    """Yield an empty temporary folder beside `target`; when the block succeeds it becomes
    `target` (replacing an existing one only if `replace`), and when it fails it is removed.
    The lock on `target` is held throughout, so a killed run's leftovers are cleaned by the
    next one and an existing folder is never lost."""
    with exclusive_target(target) as target:
        if target.exists() and not replace:
            raise ValueError(f"{target} already exists; pass --force to replace it or choose "
                             "another --out")
        if target.exists() and not target.is_dir():
            raise ValueError(f"{target} is a file, not a folder; choose another --out")
        tmp, old = _partial(target), _old(target)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            _follow_umask(tmp)
            if target.exists():
                os.rename(target, old)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not target.exists():
                os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
