"""From an upload stream to a verified tree in the staging slot: the trio side of an install.

`receive_bundle(chunks, ...)` reads the upload once, front to back, and never keeps more
than a few MiB of it:

1. the header, fed to `ota.HeaderReader` (size-capped before it is buffered);
2. `DevicePolicy.check`: signatures, then the manifest and the box's policy; nothing
   after the header is looked at before this passes, and nothing on the box has changed
   yet (a refusal here leaves the slots and the store exactly as they were);
3. `stage(manifest)`: the service empties the inactive slot and says where it is;
4. the payload, gathered into batches of about 1 MiB and pipelined through bounded
   channels (`_stream_payload`): a worker thread hashes batch N (`StagingWriter.hash`)
   while another writes the very same buffers of batch N-1 to disk (`StagingWriter.write`)
   and a third fsyncs the large files already written whole (`StagingWriter.sync`); the
   event loop receives the next batch meanwhile. When the last stage has drained, every
   file matched its signed sha256 and every byte is written (durable once `mark_complete`
   has fsynced the tree; nothing trusts the slot before its completion marker).

Limits, each ending the upload at once with its code: more bytes than `limit` before the
header says how large the bundle is (`too_large`), then any byte beyond the declared size
(`trailing_data`, so an endless upload is cut off as soon as it overflows); a
`Content-Length` that disagrees with the declared size (`truncated` or `trailing_data`,
before a payload byte is read); no byte for `stall_timeout` seconds (`stalled`).

`JobTracker` keeps the live job: progress in memory (read by `GET /ota/jobs/{id}`), each
change of state saved durably before the install goes on.

Test-only: with `$APPLIANCE_TEST_OTA_PAUSE_FILE` naming a file that holds a job state, the
process stops itself (SIGSTOP) right after the job is saved in that state, so that the
failure table (tests/ota/device/test_failure_table.py, docs/ota.md "Failure table") can
kill it, break a file under it or play the watchdog exactly there. Never set on a box.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from appliance.ota.errors import DeviceCode, OtaRefused
from appliance.ota.jobs import Job, JobState, advance
from appliance.ota.policy import DevicePolicy
from appliance.ota.records import OtaRecords
from appliance.ota.staging import StagingWriter
from ota import ErrorCode, HeaderReader, Manifest, OtaError
from ota.payload import Event

__all__ = ["BATCH_BYTES", "JobTracker", "Received", "UploadStream", "receive_bundle"]

BATCH_BYTES = 1 << 20
SYNC_QUEUE = 16  # batches' worth of finished files the writer may run ahead of their fsyncs
PAUSE_FILE_ENV = "APPLIANCE_TEST_OTA_PAUSE_FILE"  # test-only (module docstring)


class JobTracker:
    """The job of the install under way: moves saved before they are acted on."""

    def __init__(self, records: OtaRecords, job: Job) -> None:
        self.records = records
        self.job = job

    async def move(self, state: JobState, **changes: Any) -> Job:
        self.job = advance(self.job, state, **changes)
        await self.records.save(self.job)
        _pause_for_test(state)
        return self.job

    def progress(self, **changes: Any) -> None:
        """Counters only, kept in memory (a restart settles the job anyway)."""
        self.job = dataclasses.replace(self.job, **changes)


def _pause_for_test(state: JobState) -> None:
    """The test-only pause point (module docstring): a no-op unless the variable is set."""
    path = os.environ.get(PAUSE_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as stream:
                wanted = stream.read().strip()
        except OSError:
            return
        if wanted == state:
            os.kill(os.getpid(), signal.SIGSTOP)


class UploadStream:
    """The upload's chunks with the size limit and the stall timeout applied."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        *,
        limit: int,
        stall_timeout: float,
        on_bytes: Callable[[int], None],
    ) -> None:
        self._chunks = chunks
        self.limit = limit
        self.over_limit = ErrorCode.TOO_LARGE
        self.stall_timeout = stall_timeout
        self.received = 0
        self._on_bytes = on_bytes

    def expect(self, size: int) -> None:
        """The bundle declared its size: any byte beyond it is `trailing_data`."""
        self.limit = size
        self.over_limit = ErrorCode.TRAILING_DATA

    async def read(self) -> bytes | None:
        """The next chunk, or None at the end of the upload."""
        with trio.move_on_after(self.stall_timeout) as waited:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                return None
        if waited.cancelled_caught:
            raise OtaRefused(
                408,
                DeviceCode.STALLED,
                f"nothing received for {self.stall_timeout:g} s after {self.received} bytes",
            )
        self.received += len(chunk)
        self._on_bytes(self.received)
        if self.received > self.limit:
            if self.over_limit is ErrorCode.TOO_LARGE:
                detail = f"the upload passed the limit of {self.limit} bytes"
            else:
                detail = f"data after the end of the bundle ({self.limit} bytes)"
            raise OtaError(self.over_limit, detail)
        return chunk


@dataclass(frozen=True)
class Received:
    manifest: Manifest
    directory: Path


async def receive_bundle(
    stream: UploadStream,
    policy: DevicePolicy,
    *,
    content_length: int | None,
    header_read: Callable[[], Awaitable[None]],
    verified: Callable[[Manifest, int], Awaitable[Path]],
    on_files: Callable[[int], None],
) -> Received:
    """Read, verify and stage the bundle on `stream` (module docstring). `header_read()`
    is awaited once the header is in, before it is checked; `verified(manifest,
    bundle_size)` once it passed: it empties the staging slot and gives its directory.
    Raises `OtaError` or `OtaRefused`; the caller clears the slot then."""
    if content_length is not None and content_length > stream.limit:
        raise OtaError(
            ErrorCode.TOO_LARGE,
            f"Content-Length {content_length} is over the limit of {stream.limit} bytes",
        )
    header_reader = HeaderReader()
    rest = memoryview(b"")
    while header_reader.header is None:
        chunk = await stream.read()
        if chunk is None:
            header_reader.receive_eof()
            break
        used = header_reader.feed(chunk)
        rest = memoryview(chunk)[used:]
    header = header_reader.header
    assert header is not None

    await header_read()
    manifest = policy.check(header)
    bundle_size = header.size + manifest.total_size
    if content_length is not None and content_length != bundle_size:
        code = ErrorCode.TRUNCATED if content_length < bundle_size else ErrorCode.TRAILING_DATA
        raise OtaError(
            code, f"Content-Length is {content_length} bytes, the bundle declares {bundle_size}"
        )
    stream.expect(bundle_size)
    if stream.received > bundle_size:
        raise OtaError(ErrorCode.TRAILING_DATA, f"data after the end of the bundle ({bundle_size})")
    directory = await verified(manifest, bundle_size)

    writer = StagingWriter(directory, manifest)
    try:
        await _stream_payload(stream, writer, rest, on_files)
    finally:
        writer.close()
    return Received(manifest, directory)


async def _stream_payload(
    stream: UploadStream,
    writer: StagingWriter,
    first: memoryview,
    on_files: Callable[[int], None],
) -> None:
    """Four stages, each a task of one nursery, linked by bounded channels, so that
    hashing, writing and the disk overlap:

    - this task reads the upload into batches of about BATCH_BYTES;
    - `hash_batches` hashes each batch in a worker thread (`StagingWriter.hash`);
    - `write_batches` writes the events of the batch before it in another
      (`StagingWriter.write`, which also starts the writeback);
    - `sync_files` fsyncs the large files written whole in a third (`StagingWriter.sync`),
      so the disk is kept busy from the first MiB on and `mark_complete` finds little to
      do. Each fsync waits for the disk; the writer may run SYNC_QUEUE batches' worth of
      finished files ahead of them (paths only, no buffers) before it waits too.

    At most five batches of the upload are held (one being gathered, one in each of the
    two one-slot channels, one in each of the first two threads), and a slow disk slows
    the upload down through the channels. The first failure cancels the other stages;
    worker threads are not abandoned, so when this returns or raises no thread touches
    the staging directory any more."""
    to_hash, hash_queue = trio.open_memory_channel[list[Any]](1)
    to_write, write_queue = trio.open_memory_channel[list[Event]](1)
    to_sync, sync_queue = trio.open_memory_channel[list[Path]](SYNC_QUEUE)

    async def hash_batches() -> None:
        async with hash_queue, to_write:
            async for batch in hash_queue:
                await to_write.send(await trio.to_thread.run_sync(writer.hash, batch))
            await to_write.send(await trio.to_thread.run_sync(writer.finish_hash))

    async def write_batches() -> None:
        async with write_queue, to_sync:
            async for events in write_queue:
                finished = await trio.to_thread.run_sync(writer.write, events)
                on_files(writer.files_done)
                if finished:
                    await to_sync.send(finished)

    async def sync_files() -> None:
        async with sync_queue:
            async for paths in sync_queue:
                await trio.to_thread.run_sync(writer.sync, paths)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync_files)
            nursery.start_soon(write_batches)
            nursery.start_soon(hash_batches)
            async with to_hash:
                batch: list[Any] = [first] if first else []
                size = len(first)
                while (chunk := await stream.read()) is not None:
                    batch.append(chunk)
                    size += len(chunk)
                    if size >= BATCH_BYTES:
                        await to_hash.send(batch)
                        batch, size = [], 0
                if batch:
                    await to_hash.send(batch)
    except BaseExceptionGroup as group:
        raise _first_cause(group) from None


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    """The error that ended the payload: a verdict on the bundle before anything else (a
    writer that refused the data cancels the reader, whose Cancelled is only a result)."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    for kinds in ((OtaError, OtaRefused), (Exception,)):
        for leaf in leaves:
            if isinstance(leaf, kinds):
                return leaf
    return leaves[0]
