"""The group-commit writer: many callers' write functions, one durable transaction.

Callers hand a function `fn(txn) -> result` to `submit`. One task drains the bounded queue
into a batch and runs the whole batch in a worker thread: one LMDB write transaction, then
one synchronous commit. A function that raises is rolled back alone and fails only its
caller (the batch is rerun with a nested transaction per function, see `_commit`). Every
caller is told its result only after that commit returned, i.e. after fsync: an
acknowledged write is on disk.

While one batch commits, the next one gathers in the queue, so under load each fsync
carries many writes; alone, a write costs one commit, as it would without batching.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import lmdb
import outcome
import trio

from appliance.store.errors import StoreClosed, StoreError, StoreFull

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH = 1024
QUEUE_SIZE = 4096


class _Grow(Exception):
    """The map is full: grow it and run the batch again."""


@dataclass(eq=False)
class _Request(Generic[T]):
    fn: Callable[[Any], T]
    done: trio.Event = field(default_factory=trio.Event)
    result: outcome.Outcome | None = None
    abandoned: bool = False


class GroupCommitWriter:
    """Owns the only write path of one process into the environment."""

    def __init__(
        self,
        begin_write: Callable[[lmdb.Transaction | None], lmdb.Transaction],
        wrap: Callable[[lmdb.Transaction], Any],
        grow: Callable[[], bool],
        translate: Callable[[BaseException, str], StoreError],
        *,
        max_batch: int = MAX_BATCH,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self._begin_write = begin_write
        self._wrap = wrap
        self._grow = grow
        self._translate = translate
        self._max_batch = max_batch
        self._send, self._receive = trio.open_memory_channel[_Request[Any]](queue_size)
        self._limiter = trio.CapacityLimiter(1)
        self.batch_started_at: float | None = None  # monotonic; None while idle
        self.commits = 0
        self.writes = 0
        self.running = False

    async def submit(self, fn: Callable[[Any], T]) -> T:
        """Run `fn` in the next batch; return its result once the batch is durable."""
        request: _Request[T] = _Request(fn)
        try:
            # Without the scheduling round trip of `send` when there is room (the common
            # case); the wait below is the checkpoint either way.
            try:
                self._send.send_nowait(request)
            except trio.WouldBlock:
                await self._send.send(request)  # the queue is full: wait for room
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StoreClosed("the store is closed") from None
        try:
            await request.done.wait()
        except trio.Cancelled:
            # Not acknowledged. If the batch has not reached it yet it is skipped; if it
            # has, it may still commit: a write that was not acknowledged may exist.
            request.abandoned = True
            raise
        assert request.result is not None
        return request.result.unwrap()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        task_status.started()
        try:
            async with self._receive:
                async for first in self._receive:
                    batch = [first]
                    while len(batch) < self._max_batch:
                        try:
                            batch.append(self._receive.receive_nowait())
                        except trio.WouldBlock:
                            break
                    # Not abandonable: a batch that started always finishes, so a cancel
                    # (shutdown) waits for the commit instead of leaving it half done.
                    await trio.to_thread.run_sync(self._run_batch, batch, limiter=self._limiter)
                    for request in batch:
                        request.done.set()
        finally:
            self.running = False
            self._send.close()

    def close(self) -> None:
        """Refuse new writes; queued ones still commit if `serve` is running."""
        self._send.close()

    # Everything below runs in the worker thread.

    def _run_batch(self, batch: list[_Request[Any]]) -> None:
        self.batch_started_at = time.monotonic()
        try:
            while True:
                try:
                    self._commit(batch)
                    self.commits += 1
                    return
                except _Grow:
                    if not self._grow():
                        self._fail_pending(batch, StoreFull("the store reached max_map_size_mb"))
                        return
                except (lmdb.Error, OSError) as exc:
                    log.error("store commit failed: %s", exc)
                    self._fail_pending(batch, self._translate(exc, "commit"))
                    return
        finally:
            self.batch_started_at = None

    def _commit(self, batch: list[_Request[Any]]) -> None:
        """Run the batch flat in one transaction; if any function raises, run it again with
        a nested transaction per function, so only the failing ones are rolled back.

        Nested transactions cost LMDB a large allocation each, and failures are rare (most
        are refused before they reach the store), so the common case stays flat."""
        parent = self._begin_write(None)
        try:
            if not self._run_flat(parent, batch):
                parent.abort()
                parent = self._begin_write(None)
                for request in batch:
                    if not request.abandoned:
                        request.result = self._run_nested(parent, request.fn)
            parent.commit()  # the environment is opened with sync=True: this fsyncs
        except lmdb.MapFullError:  # saving the free-page list may need pages too
            parent.abort()
            raise _Grow() from None
        except BaseException:
            parent.abort()
            raise
        self.writes += sum(1 for r in batch if isinstance(r.result, outcome.Value))

    def _run_flat(self, parent: lmdb.Transaction, batch: list[_Request[Any]]) -> bool:
        """Every function straight in `parent`; False as soon as one raises."""
        txn = self._wrap(parent)
        for request in batch:
            request.result = None
            if request.abandoned:
                continue
            try:
                request.result = outcome.Value(request.fn(txn))
            except lmdb.MapFullError:
                raise
            except Exception:
                return False
        return True

    def _run_nested(self, parent: lmdb.Transaction, fn: Callable[[Any], Any]) -> outcome.Outcome:
        child = self._begin_write(parent)
        try:
            result = fn(self._wrap(child))
        except lmdb.MapFullError:
            child.abort()
            raise
        except (lmdb.Error, OSError) as exc:
            child.abort()
            return outcome.Error(self._translate(exc, "write"))
        except Exception as exc:
            child.abort()
            return outcome.Error(exc)
        child.commit()
        return outcome.Value(result)

    @staticmethod
    def _fail_pending(batch: list[_Request[Any]], error: StoreError) -> None:
        for request in batch:  # one exception object per caller: each raises its own
            request.result = outcome.Error(type(error)(*error.args))
