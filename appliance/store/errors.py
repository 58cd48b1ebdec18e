"""The store's errors: each names a situation an operator or a caller can act on."""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

import lmdb


class StoreError(Exception):
    """Base of the store's errors."""


class StoreFull(StoreError):
    """The disk, the file size limit or the largest allowed map is full; nothing was written."""


class StoreIOError(StoreError):
    """The operating system refused a read or write of the store files."""


class StoreClosed(StoreError):
    """The store was closed (the appliance is stopping)."""


class StoreVersionError(StoreError):
    """The data was written by a newer appliance whose schema this one does not know."""


_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


_NEARLY_FULL_BYTES = 1 << 20


def translate(exc: lmdb.Error | OSError, what: str, path: Path | None = None) -> StoreError:
    """Turn a py-lmdb or OS error into the store's own exception tree.

    A write that runs into a full disk (or the file size limit) part-way is a short write,
    which LMDB reports as a plain I/O error; with `path`, such an error is checked against
    the free space and the size limit so that it is still reported as full."""
    if isinstance(exc, lmdb.MapFullError):
        return StoreFull(f"{what}: the store reached its largest allowed size")
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in _FULL_ERRNOS or any(
        marker in text for marker in ("No space left", "File too large", "Disk quota")
    ):
        return StoreFull(f"{what}: the disk is full ({text})")
    if path is not None and _nearly_full(path):
        return StoreFull(f"{what}: the disk or the file size limit is reached ({text})")
    return StoreIOError(f"{what}: {text}")


def _nearly_full(path: Path) -> bool:
    try:
        disk = os.statvfs(path)
        if disk.f_bavail * disk.f_frsize < _NEARLY_FULL_BYTES:
            return True
        soft_limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        size = (path / "data.mdb").stat().st_size
    except OSError:
        return False
    return soft_limit != resource.RLIM_INFINITY and size + _NEARLY_FULL_BYTES >= soft_limit
