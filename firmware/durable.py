"""File operations that survive a crash at any point: the only module here that fsyncs.

- `write_atomic(path, data)`: write a temp file beside `path`, fsync it, rename it over
  `path`, fsync the directory. A reader sees the old bytes or the new, never a mix.
- `switch_symlink(link, target)`: the same for a symlink (`os.replace` of a fresh link).
- `sync_tree(root)`: fsync every file and directory under `root`, so a marker written
  afterwards never describes data still only in the page cache.
- `state_lock(path, timeout)`: an exclusive `flock` for a read-modify-write of the state,
  shared by every process (the appliance, the CLI); the kernel drops it if its holder dies.

Temp names are fixed (`.NAME.tmp`): every writer holds the state lock, and a temp left by
a crash is overwritten by the next write rather than piling up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from firmware.errors import Busy

__all__ = [
    "clear_dir",
    "fsync_dir",
    "read_link",
    "state_lock",
    "switch_symlink",
    "sync_tree",
    "write_atomic",
]

_LOCK_POLL_S = 0.02


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    temp = _temp_for(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_dir(path.parent)


def switch_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` (a relative name) atomically."""
    temp = _temp_for(link)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    os.symlink(target, temp)
    os.replace(temp, link)
    fsync_dir(link.parent)


def read_link(link: Path) -> str | None:
    try:
        return os.readlink(link)
    except (FileNotFoundError, OSError):
        return None


def sync_tree(root: Path) -> None:
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue  # a symlink's bytes live in its directory, fsynced below
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(directory))


def clear_dir(path: Path) -> None:
    """Leave `path` an empty directory, durably."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir()
    fsync_dir(path.parent)


@contextlib.contextmanager
def state_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive lock on `path`, waiting at most `timeout` seconds for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy(
                        "busy", f"another process holds {path} for more than {timeout} s"
                    ) from None
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)
