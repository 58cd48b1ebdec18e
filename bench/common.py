"""What every benchmark shares: the figure record, scratch directories, child processes."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PYTHON = sys.executable
# Where scratch data goes, best first: must be a real disk, never tmpfs/ramfs.
SCRATCH_CANDIDATES = (Path("/var/tmp"), RESULTS, Path(tempfile.gettempdir()))
# The numba cache shared by the benchmarks and every appliance they start (unless one sets
# its own, as `startup` does for its cold starts): compiling the kernels takes ~30 s, paid
# once here instead of in every benchmark that needs them. Gitignored (.cache/).
NUMBA_CACHE = PROJECT / ".cache" / "numba-bench"
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs", "devtmpfs", "overlay-tmpfs"}


@dataclass
class Figure:
    """One measured figure, beside the reference it was measured against in the same run."""

    benchmark: str
    name: str
    value: float
    unit: str
    target: str
    passed: bool | None  # None: informational, no target
    reference: float | None = None
    reference_name: str = ""
    ratio: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def log(message: str) -> None:
    """Progress goes to stderr so that the table on stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` lives on, from /proc/self/mounts (longest mount)."""
    resolved = str(path.resolve())
    best, best_type = "", "unknown"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return best_type
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, parts[2]
    return best_type


def disk_base() -> tuple[Path, str]:
    """A writable directory on a real disk (not tmpfs) and its filesystem type."""
    for candidate in SCRATCH_CANDIDATES:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        kind = filesystem_type(candidate)
        if kind not in MEMORY_FILESYSTEMS and os.access(candidate, os.W_OK):
            return candidate, kind
    raise RuntimeError("no writable directory on a real disk for the benchmark data")


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory on a real disk, removed afterwards."""
    base, _ = disk_base()
    path = Path(tempfile.mkdtemp(prefix=f"appliance-bench-{prefix}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without anything that would change how an appliance child behaves, with
    NUMBA_CACHE_DIR set to the benchmarks' shared cache unless `extra` sets it."""
    prefixes = (
        "APPLIANCE_",
        "NOTIFY_SOCKET",
        "WATCHDOG_",
        "LISTEN_",
        "JOURNAL_STREAM",
        "STATE_DIRECTORY",
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    environment["PYTHONUNBUFFERED"] = "1"
    environment["NUMBA_CACHE_DIR"] = str(NUMBA_CACHE)
    environment.update(extra or {})
    return environment


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in `timeout` s; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values` by the nearest-rank method; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
