"""The payload, streamed: bytes in, file events out, every file hashed as it passes. Sans-IO.

The payload is the files' bytes back to back in manifest order, nothing between them and
nothing after the last. `PayloadReader(manifest)` is fed the payload (everything after the
header) in chunks of any size and turns it into events, h11-style:

    reader.receive_data(chunk)        # then drain:
    reader.next_event()  -> FileStart(entry)        a file begins (also for empty files)
                         -> FileData(entry, data)   the next bytes of that file
                         -> FileDone(entry)         its size and sha256 are as signed
                         -> NEED_DATA               feed the next chunk (or receive_eof())
                         -> PAYLOAD_DONE            every file done, end of input, nothing extra
    reader.receive_eof()              # the input has ended

`feed(chunk)` and `finish()` wrap that loop as generators (iterate them to the end).

Memory is bounded by one chunk: `FileData.data` is a memoryview *into the chunk the caller
passed* (no copy) and is only valid until the next `receive_data`; the reader refuses a new
chunk before the previous one is drained. Each byte is hashed once, as it passes.

The bytes of a `FileData` are unverified until that file's `FileDone`: a consumer writes
them to a staging area and trusts the file only after `FileDone`, and throws the staging
area away on any error. Errors are `OtaError`, raised by `next_event` at the exact point
they are known: `payload_hash_mismatch` at the end of a file whose sha256 differs,
`truncated` when the input ends early, `trailing_data` as soon as a byte arrives after the
last file. After an error the reader is spent (`OtaMisuse` on further use).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Final

from ota.errors import ErrorCode, OtaError, OtaMisuse
from ota.manifest import Manifest, PayloadEntry

__all__ = [
    "NEED_DATA",
    "PAYLOAD_DONE",
    "Event",
    "FileData",
    "FileDone",
    "FileStart",
    "PayloadReader",
]


class _Signal(Enum):
    NEED_DATA = "need_data"
    PAYLOAD_DONE = "payload_done"


NEED_DATA: Final = _Signal.NEED_DATA
PAYLOAD_DONE: Final = _Signal.PAYLOAD_DONE


@dataclass(frozen=True)
class FileStart:
    entry: PayloadEntry


@dataclass(frozen=True)
class FileData:
    entry: PayloadEntry
    data: memoryview


@dataclass(frozen=True)
class FileDone:
    entry: PayloadEntry


Event = FileStart | FileData | FileDone | _Signal
_EMPTY = memoryview(b"")


class PayloadReader:
    """Checks a payload against a verified manifest while it streams past."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.offset = 0  # payload bytes consumed so far (for progress)
        self._files = manifest.files
        self._index = 0
        self._started = False
        self._remaining = 0
        self._hasher = hashlib.sha256()
        self._view = _EMPTY
        self._pos = 0
        self._eof = False
        self._finished = False
        self._failed = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """The next chunk of payload (after the previous one was drained to NEED_DATA)."""
        self._check_usable()
        if self._eof:
            raise OtaMisuse("receive_data after receive_eof")
        if self._pos < len(self._view):
            raise OtaMisuse("the previous chunk is not drained yet (call next_event)")
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def receive_eof(self) -> None:
        """The input has ended: what is missing now is missing for good."""
        self._check_usable()
        self._eof = True

    def next_event(self) -> Event:
        self._check_usable()
        try:
            return self._next_event()
        except OtaError:
            self._failed = True
            self._view = _EMPTY
            raise

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[Event]:
        """`receive_data(data)`, then the events up to NEED_DATA (not included)."""
        self.receive_data(data)
        while (event := self.next_event()) is not NEED_DATA:
            yield event

    def finish(self) -> Iterator[Event]:
        """`receive_eof()`, then the remaining events, the last being PAYLOAD_DONE."""
        self.receive_eof()
        while True:
            event = self.next_event()
            yield event
            if event is PAYLOAD_DONE:
                return

    def _check_usable(self) -> None:
        if self._failed:
            raise OtaMisuse("this payload reader already refused the payload")
        if self._finished:
            raise OtaMisuse("this payload reader is finished")

    def _next_event(self) -> Event:
        if self._index == len(self._files):
            if self._pos < len(self._view):
                raise OtaError(
                    ErrorCode.TRAILING_DATA,
                    f"data after the last file (payload is {self.manifest.total_size} bytes)",
                )
            if not self._eof:
                return NEED_DATA
            self._finished = True
            return PAYLOAD_DONE
        entry = self._files[self._index]
        if not self._started:
            self._started = True
            self._remaining = entry.size
            self._hasher = hashlib.sha256()
            return FileStart(entry)
        if self._remaining == 0:
            if self._hasher.digest() != entry.sha256:
                raise OtaError(
                    ErrorCode.PAYLOAD_HASH_MISMATCH,
                    f"{entry.path!r}: sha256 {self._hasher.hexdigest()} is not the signed "
                    f"{entry.sha256.hex()}",
                )
            self._index += 1
            self._started = False
            return FileDone(entry)
        available = len(self._view) - self._pos
        if available == 0:
            if self._eof:
                raise OtaError(
                    ErrorCode.TRUNCATED,
                    f"the payload ends in {entry.path!r} after {entry.size - self._remaining}"
                    f" of its {entry.size} bytes",
                )
            return NEED_DATA
        take = min(available, self._remaining)
        data = self._view[self._pos : self._pos + take]
        self._hasher.update(data)
        self._pos += take
        self._remaining -= take
        self.offset += take
        if self._pos == len(self._view):
            self._view = _EMPTY  # drop our reference to the caller's buffer
            self._pos = 0
        return FileData(entry, data)
