"""The loader's memory: what loading the kernels needs and serving them does not.

Two things stay resident after the warm-up for no use, and this module gives them back:

- SciPy, which the appliance never uses: `import numba` imports it to check its version,
  and numba's array lowering (imported by the first load or compile) imports its BLAS to
  offer `np.dot` and `numpy.linalg`, which no kernel uses: ~12 MiB. `load_kernels` imports
  numba `with scipy_hidden()`, and `import_lowering_without_scipy` imports the lowering
  the same way, unless the process already imported SciPy (the tests and benchmarks do:
  nothing changes for them).
- LLVM's code: loading a kernel from numba's cache still links it with LLVM, and numba
  compiles its small runtime module once per process, which touches ~65 MiB of the
  170 MiB `libllvmlite.so`. Once every kernel is loaded, LLVM runs again only if a new
  signature has to compile. Those pages are clean file pages: `release_compiler_pages`
  drops them from the process with `madvise(MADV_DONTNEED)` (they come back from the
  page cache on the next fault, nothing is lost), and `malloc_trim` returns the C heap's
  free tail.

Only read-only mappings with no dirty and no anonymous page are advised: for those,
dropping a page and faulting it back in gives the same bytes (a relocated, RELRO or
written page would be lost, so those are never touched). `clean_mappings` makes that
choice from the text of /proc/self/smaps and does no I/O.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LLVM_LIBRARY = "libllvmlite.so"
MADV_DONTNEED = 4
_DIRTY_FIELDS = ("Private_Dirty", "Shared_Dirty", "Anonymous", "Swap")


@dataclass(frozen=True)
class Mapping:
    """One mapping of /proc/PID/smaps: its range, permissions, file and dirty/anon kB."""

    start: int
    end: int
    perms: str
    path: str
    rss_kib: int
    dirty_kib: int  # Private_Dirty + Shared_Dirty + Anonymous + Swap


def parse_smaps(text: str) -> list[Mapping]:
    """The mappings of an smaps text, in order."""
    mappings: list[Mapping] = []
    header: list[str] | None = None
    fields: dict[str, int] = {}

    def close() -> None:
        if header is not None:
            start, end = (int(value, 16) for value in header[0].split("-"))
            path = header[5] if len(header) > 5 else ""
            dirty = sum(fields.get(name, 0) for name in _DIRTY_FIELDS)
            mappings.append(Mapping(start, end, header[1], path, fields.get("Rss", 0), dirty))

    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0].endswith(":"):
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
            continue
        close()
        header, fields = parts, {}
    close()
    return mappings


def clean_mappings(mappings: list[Mapping], library: str) -> list[Mapping]:
    """The mappings of `library` (its file name) that are read-only, hold resident pages
    and have no dirty, anonymous or swapped page: dropping theirs loses nothing."""
    return [
        m
        for m in mappings
        if Path(m.path).name == library
        and "w" not in m.perms
        and m.rss_kib > 0
        and m.dirty_kib == 0
    ]


def release_compiler_pages() -> int:
    """Drop LLVM's clean resident pages from this process and trim the C heap; returns the
    resident KiB advised away (0 where /proc or madvise is missing). Blocking, cheap."""
    try:
        smaps = Path("/proc/self/smaps").read_text()
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return 0
    released = 0
    madvise = getattr(libc, "madvise", None)
    if madvise is not None:
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for mapping in clean_mappings(parse_smaps(smaps), LLVM_LIBRARY):
            if madvise(mapping.start, mapping.end - mapping.start, MADV_DONTNEED) == 0:
                released += mapping.rss_kib
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)
    return released


@contextmanager
def scipy_hidden() -> Iterator[None]:
    """Within: `import scipy` fails (ImportError), unless SciPy is already imported."""
    hide = "scipy" not in sys.modules
    if hide:
        sys.modules["scipy"] = None  # type: ignore[assignment]  # the import system's "absent"
    try:
        yield
    finally:
        if hide and "scipy" in sys.modules and sys.modules["scipy"] is None:
            del sys.modules["scipy"]


def import_lowering_without_scipy() -> None:
    """Import numba's array lowering (which the first load or compile imports anyway) with
    SciPy hidden, so that numba does not import SciPy to probe for BLAS. In the appliance,
    kernels therefore cannot use `np.dot` or `numpy.linalg` (none does; one that did would
    fail to compile at start-up, which tests/runtime/test_kernel_startup.py would show)."""
    with scipy_hidden():
        import numba.np.arraymath  # noqa: F401
