"""Writing a verified manifest's payload into the staging slot as it streams past. Blocking.

`StagingWriter(directory, manifest)` drives `ota.PayloadReader` and turns its events into
files under `directory` (the slot `SlotManager.staging_dir` just emptied):

    FileStart  create the file (O_EXCL | O_NOFOLLOW, mode 0600; parents made as needed)
    FileData   write exactly the bytes the reader just hashed: `FileData.data` is a view
               into the caller's chunk, so the bytes on disk are the bytes hashed, with no
               copy in between and no second read
    FileDone   the file's sha256 matched the signed one: set its mode and close it

`feed(chunks)` takes a batch of chunks (the caller gathers about 1 MiB from the upload and
runs `feed` in a worker thread: hashing and writing release the GIL, and the event loop
goes on receiving the next batch meanwhile); `finish()` says the upload ended. Any
`OtaError` from the reader (`payload_hash_mismatch`, `truncated`, `trailing_data`) or
`OSError` from the disk ends the writer; the caller then throws the staging directory
away. Durability is the slot manager's: `mark_complete` fsyncs the whole tree before it
writes the completion marker, and nothing trusts a slot without that marker. To make that
fsync short, the writer asks the kernel to start writing back every 4 MiB of a file, and
each file as it is done, without waiting (`posix_fadvise(POSIX_FADV_DONTNEED)`): the disk
writes while the next bytes are hashed.

The directory starts empty and only this writer creates things in it, and manifest paths
are relative, normalised and never nest a file inside another (`ota.manifest`), so no path
can leave the directory; O_NOFOLLOW is a second lock on the same door.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ota import FileData, FileDone, FileStart, Manifest, PayloadReader

__all__ = ["StagingWriter"]

WRITEBACK_BYTES = 4 << 20
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class StagingWriter:
    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = Path(directory)
        self.reader = PayloadReader(manifest)
        self.files_done = 0
        self._fd: int | None = None
        self._written = 0  # bytes written to the open file
        self._flushed = 0  # of which the kernel was asked to start writing back
        self._made: set[Path] = {self.directory}

    @property
    def offset(self) -> int:
        """Payload bytes hashed (and written) so far."""
        return self.reader.offset

    def feed(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            for event in self.reader.feed(chunk):
                self._apply(event)

    def finish(self) -> None:
        """The upload ended: `truncated` if a file is short; otherwise every file is done."""
        for event in self.reader.finish():
            self._apply(event)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _apply(self, event: object) -> None:
        if isinstance(event, FileData):
            view = event.data
            while view:
                view = view[os.write(self._fd, view) :]  # type: ignore[arg-type]
            self._written += len(event.data)
            if self._written - self._flushed >= WRITEBACK_BYTES:
                self._start_writeback()
        elif isinstance(event, FileStart):
            target = self.directory / event.entry.path
            self._make_parents(target.parent)
            self._fd = os.open(target, _CREATE, 0o600)
            self._written = self._flushed = 0
        elif isinstance(event, FileDone):
            assert self._fd is not None
            os.fchmod(self._fd, event.entry.mode & 0o777)
            self._start_writeback()
            self.close()
            self.files_done += 1

    def _start_writeback(self) -> None:
        """Have the kernel start writing what this file got since the last call, without
        waiting for it (POSIX_FADV_DONTNEED starts writeback of dirty pages): the disk
        works while the next bytes are hashed, and the fsync of the whole tree at the
        end finds little left to write."""
        assert self._fd is not None
        if self._written > self._flushed:
            length = self._written - self._flushed
            os.posix_fadvise(self._fd, self._flushed, length, os.POSIX_FADV_DONTNEED)
            self._flushed = self._written

    def _make_parents(self, directory: Path) -> None:
        if directory in self._made:
            return
        self._make_parents(directory.parent)
        os.mkdir(directory, 0o755)  # new: the tree starts empty and paths never repeat
        self._made.add(directory)
