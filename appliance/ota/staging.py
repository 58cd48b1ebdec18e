"""Writing a verified manifest's payload into the staging slot as it streams past. Blocking.

`StagingWriter(directory, manifest)` drives `ota.PayloadReader` and turns its events into
files under `directory` (the slot `SlotManager.staging_dir` just emptied). It has three
parts, each run by the installer in a worker thread of its own so that they overlap (batch
N is hashed while batch N-1 is written and the files before are fsynced; hashing and
writing release the GIL on 1 MiB buffers). Each part touches only its own state:

    hash(chunks) -> events     the reader hashes the bytes and cuts them into file events
                               (no I/O). `FileData.data` is a view into the caller's chunk,
                               which is read-only (a `bytes`; anything mutable is copied
                               first), so the bytes written later are the bytes hashed,
                               with no copy in between and no second read. A file's
                               `FileDone` comes only once its sha256 matched the signed one.
    write(events) -> paths     FileStart  create the file (O_EXCL | O_NOFOLLOW, mode 0600;
                                          parents made as needed)
                               FileData   write the bytes hashed
                               FileDone   set the file's mode and close it
    sync(paths)                fsync the large files `write` finished

`write` must get the events of `hash` in the order they were made (`feed(chunks)` is both in
one call). `finish_hash()` says the upload ended (its events: the rest; `truncated` if a
file is short). Any `OtaError` from the reader (`payload_hash_mismatch`, `truncated`,
`trailing_data`) or `OSError` from the disk ends the install; the caller then throws the
staging directory away. The bytes of a file are on disk, unverified, before its hash is
known to match (at most a batch later: the writer follows the hasher); that is harmless
because trust is the slot manager's: `mark_complete` fsyncs the whole tree before it writes
the completion marker, and the installer only asks for it once every file's `FileDone` was
written. To keep the disk busy from the first MiB on, and that final fsync short, the
writer asks the kernel to start writing back every 4 MiB of a file and each file as it is
done, without waiting (`posix_fadvise(POSIX_FADV_DONTNEED)`), and files of at least
EARLY_SYNC_BYTES are fsynced as soon as they are whole (smaller ones are left to the fsync
of the tree, where the journal commits them together rather than one commit per file).

The directory starts empty and only this writer creates things in it, and manifest paths
are relative, normalised and never nest a file inside another (`ota.manifest`), so no path
can leave the directory; O_NOFOLLOW is a second lock on the same door.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ota import FileData, FileDone, FileStart, Manifest, PayloadReader
from ota.payload import Event

__all__ = ["EARLY_SYNC_BYTES", "WRITEBACK_BYTES", "StagingWriter"]

WRITEBACK_BYTES = 4 << 20
EARLY_SYNC_BYTES = 1 << 20
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SYNC = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_HAS_FADVISE = hasattr(os, "posix_fadvise")


class StagingWriter:
    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = Path(directory)
        self.reader = PayloadReader(manifest)
        self.files_done = 0  # files written whole with a matching sha256
        self._fd: int | None = None
        self._written = 0  # bytes written to the open file
        self._flushed = 0  # of which the kernel was asked to start writing back
        self._made: set[Path] = {self.directory}

    @property
    def offset(self) -> int:
        """Payload bytes hashed so far."""
        return self.reader.offset

    # -- the hashing half: the reader's state only, no I/O --------------------------------

    def hash(self, chunks: Iterable[bytes | bytearray | memoryview]) -> list[Event]:
        """Hash `chunks` (the next bytes of the payload); the events to `write`."""
        events: list[Event] = []
        for chunk in chunks:
            view = memoryview(chunk)
            if not view.readonly:
                view = memoryview(bytes(view))  # the caller may reuse a mutable buffer
            events.extend(self.reader.feed(view))
        return events

    def finish_hash(self) -> list[Event]:
        """The upload ended: `truncated` if a file is short; otherwise the last events."""
        return [event for event in self.reader.finish() if isinstance(event, _FILE_EVENTS)]

    # -- the writing half: files and directories only ------------------------------------

    def write(self, events: Sequence[Event]) -> list[Path]:
        """Apply `events` from `hash`/`finish_hash`, in the order they were made; the
        files of at least EARLY_SYNC_BYTES this finished (for `sync`; smaller files are
        cheaper to leave to the fsync of the tree, where the journal commits them together)."""
        finished: list[Path] = []
        for event in events:
            if isinstance(event, FileData):
                self._write(event.data)
            elif isinstance(event, FileStart):
                self._open(event.entry.path)
            elif isinstance(event, FileDone):
                assert self._fd is not None
                os.fchmod(self._fd, event.entry.mode & 0o777)
                self._start_writeback()
                self.close()
                self.files_done += 1
                if event.entry.size >= EARLY_SYNC_BYTES:
                    finished.append(self.directory / event.entry.path)
        return finished

    # -- the syncing half -----------------------------------------------------------------

    @staticmethod
    def sync(paths: Iterable[Path]) -> None:
        """fsync files `write` finished (their writeback already started), so that the
        fsync of the whole tree in `mark_complete` finds them clean: the journal commits
        and the wait for the disk overlap the hashing and writing of the files after them."""
        for path in paths:
            fd = os.open(path, _SYNC, 0)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def feed(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """Hash, then write, in the calling thread."""
        self.write(self.hash(chunks))

    def finish(self) -> None:
        self.write(self.finish_hash())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self, path: str) -> None:
        target = self.directory / path
        self._make_parents(target.parent)
        self._fd = os.open(target, _CREATE, 0o600)
        self._written = self._flushed = 0

    def _write(self, data: memoryview) -> None:
        assert self._fd is not None
        view = data
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += len(data)
        if self._written - self._flushed >= WRITEBACK_BYTES:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Have the kernel start writing what this file got since the last call, without
        waiting for it (POSIX_FADV_DONTNEED starts writeback of dirty pages): the disk
        works while the next bytes are hashed, and the fsync of the whole tree at the
        end finds little left to write."""
        assert self._fd is not None
        if self._written > self._flushed:
            if _HAS_FADVISE:
                length = self._written - self._flushed
                os.posix_fadvise(self._fd, self._flushed, length, os.POSIX_FADV_DONTNEED)
            self._flushed = self._written

    def _make_parents(self, directory: Path) -> None:
        if directory in self._made:
            return
        self._make_parents(directory.parent)
        os.mkdir(directory, 0o755)  # new: the tree starts empty and paths never repeat
        self._made.add(directory)


_FILE_EVENTS = (FileStart, FileData, FileDone)
