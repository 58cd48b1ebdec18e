"""The store's errors: each names a situation an operator or a caller can act on."""

from __future__ import annotations

import errno

import lmdb


class StoreError(Exception):
    """Base of the store's errors."""


class StoreFull(StoreError):
    """The disk, the file size limit or the largest allowed map is full; nothing was written."""


class StoreIOError(StoreError):
    """The operating system refused a read or write of the store files."""


class StoreClosed(StoreError):
    """The store was closed (the appliance is stopping)."""


class StoreLocked(StoreError):
    """Another process holds the store's single-writer role (a second `appliance run`)."""


class StoreVersionError(StoreError):
    """The data was written by a newer appliance whose schema this one does not know."""


_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def translate(exc: lmdb.Error | OSError, what: str) -> StoreError:
    """Turn a py-lmdb or OS error into the store's own exception tree."""
    if isinstance(exc, lmdb.MapFullError):
        return StoreFull(f"{what}: the store reached its largest allowed size")
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in _FULL_ERRNOS or any(
        marker in text for marker in ("No space left", "File too large", "Disk quota")
    ):
        return StoreFull(f"{what}: the disk is full ({text})")
    return StoreIOError(f"{what}: {text}")
