"""The task scheduler: a bounded priority queue and `concurrency` workers in our nursery.

Each worker takes the next task, takes a CPU slot, records the task as running (durably),
and runs the kernel in a worker thread (numba releases the GIL, so the event loop stays
responsive while every core computes). A timeout or a cancel stops the *wait*: the thread
cannot be interrupted and runs its kernel to the end, and its CPU slot stays taken until it
does, so the machine is never oversubscribed; its result is then discarded.

Retryable failures (out of memory, an OS error, a run interrupted by a restart) go back
to the queue after an exponential backoff with full jitter; a kernel that raises for its
input fails at once (it would fail again).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from appliance.kernels import Kernel
from appliance.tasks.inputs import outputs_to_storable
from appliance.tasks.model import Task, TaskState, new_task_id
from appliance.tasks.priority import lowered_priority
from appliance.tasks.queue import QueueFull, RunQueue
from appliance.tasks.repository import DuplicateKey, TaskRepository

log = logging.getLogger(__name__)
RETRYABLE = (MemoryError, OSError)
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 60.0
CANCEL_RECORD_WAIT_S = 5.0
EXPIRY_BATCH = 500


@dataclass(frozen=True)
class SchedulerLimits:
    max_queue: int = 1000
    concurrency: int = 0  # 0: one per CPU core
    result_ttl_s: float = 86400.0
    cleanup_interval_s: float = 60.0
    kernel_nice: int = 0  # nice increment of kernel threads, see appliance.tasks.priority

    @property
    def workers(self) -> int:
        return self.concurrency or os.cpu_count() or 1


class _HeldSlot:
    """A CPU slot taken before the thread starts, released by trio when the thread ends
    (even when the wait for it was abandoned by a timeout or a cancel)."""

    def __init__(self, limiter: trio.CapacityLimiter, borrower: object) -> None:
        self._limiter = limiter
        self._borrower = borrower
        self.handed_to_thread = False

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        self.handed_to_thread = True  # from now on trio releases it when the thread ends

    def release_on_behalf_of(self, borrower: object) -> None:
        self._limiter.release_on_behalf_of(self._borrower)


def _checked_run(kernel: Kernel, data, params: dict[str, Any], nice: int) -> dict[str, Any]:
    """Check the stored parameters again (cheap) before the jitted code trusts them: a
    record written by an older version must not reach numba unchecked. The kernel runs
    below the event loop's priority when `nice` > 0."""
    checked = kernel.check_params(params)
    if not data.flags.writeable:
        # Input read back from the store is a view of immutable bytes, and numba compiles a
        # separate specialisation for read-only arrays, which the warm-up does not load: a
        # copy (here, off the loop) keeps the compiler off the request path.
        data = data.copy()
    with lowered_priority(nice):
        return kernel.run(data, checked)


class Scheduler:
    def __init__(
        self,
        repository: TaskRepository,
        kernels: dict[str, Kernel],
        limits: SchedulerLimits,
        *,
        kernels_ready: trio.Event,
        observe: Callable[[str, str, float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.repository = repository
        self.kernels = kernels
        self.limits = limits
        self.queue = RunQueue(limits.max_queue)
        self.slots = trio.CapacityLimiter(limits.workers)
        self.kernels_ready = kernels_ready
        self._running: dict[str, tuple[trio.CancelScope, trio.Event]] = {}
        self._cancel_requested: set[str] = set()
        self._cancelling: set[str] = set()
        self._submitting = 0
        self._counts: Counter[str] = Counter()
        self._observe = observe or (lambda kernel, outcome, seconds: None)
        self._finish_waiters: dict[str, list] = {}  # task id -> [Event, number of waiters]
        self._rng = rng or random.Random()

    # Submitting and controlling tasks (called by the API).

    async def submit(
        self,
        kernel: str,
        params: dict[str, Any],
        data,
        *,
        priority: int,
        timeout_s: float,
        max_retries: int,
        idempotency_key: str | None,
        submitted_by: str,
    ) -> tuple[Task, bool]:
        """Queue a checked task; returns (task, created). An idempotency key that was used
        before returns that task and `created=False`. Raises `QueueFull`."""
        if idempotency_key is not None:
            existing = self.repository.by_key(idempotency_key)
            if existing is not None:
                return existing, False
        if len(self.queue) + self._submitting >= self.queue.capacity:
            raise QueueFull(f"the task queue holds {self.queue.capacity} tasks")
        task = Task(
            id=new_task_id(),
            kernel=kernel,
            params=params,
            priority=priority,
            timeout_s=timeout_s,
            max_retries=max_retries,
            created_at=time.time(),
            idempotency_key=idempotency_key,
            submitted_by=submitted_by,
            input_samples=int(data.size),
            input_dtype=data.dtype.name,
        )
        self._submitting += 1  # held while the write is in flight: the bound stays exact
        try:
            await self.repository.add(task, data)
        except DuplicateKey as duplicate:
            return duplicate.existing, False
        finally:
            self._submitting -= 1
        self._counts[str(task.state)] += 1
        self.queue.put(task.id, task.priority, force=True)
        return task, True

    async def cancel(self, task: Task) -> Task:
        """Cancel a queued or running task; a task that ended meanwhile is returned as is.

        Everything is decided on the scheduler's own view (no await before the decision),
        so a worker picking the task up at the same moment cannot undo the cancel."""
        if task.id in self._running:
            scope, recorded = self._running[task.id]
            self._cancel_requested.add(task.id)
            scope.cancel()  # the wait ends now; the kernel thread runs on, see above
            with trio.move_on_after(CANCEL_RECORD_WAIT_S):
                await recorded.wait()
            return self.repository.get(task.id) or task
        current = self.repository.get(task.id) or task
        if current.state is not TaskState.QUEUED:
            return current
        self._cancelling.add(task.id)  # a worker that already took it skips it
        self.queue.remove(task.id)
        cancelled = current.moved(
            TaskState.CANCELLED,
            finished_at=time.time(),
            error={"code": "cancelled", "message": "cancelled by request"},
        )
        try:
            await self._record(current, cancelled)
        finally:
            self._cancelling.discard(task.id)
        return cancelled

    async def until_finished(self, task_id: str) -> None:
        """Return once the task has ended (the caller bounds the wait, see api.longpoll).

        Waiters of one task share one event, set by the state change that ends it; the
        entry goes when its last waiter leaves, so abandoned waits leave nothing behind."""
        entry = self._finish_waiters.setdefault(task_id, [trio.Event(), 0])
        entry[1] += 1
        try:
            await entry[0].wait()
        finally:
            entry[1] -= 1
            if entry[1] == 0 and self._finish_waiters.get(task_id) is entry:
                del self._finish_waiters[task_id]

    def status(self) -> dict[str, Any]:
        return {
            "queue_depth": len(self.queue),
            "queue_capacity": self.queue.capacity,
            "running": len(self._running),
            "capacity": self.limits.workers,
            "busy_slots": self.slots.borrowed_tokens,
            "kernels_ready": self.kernels_ready.is_set(),
            "totals": {str(state): self._counts[str(state)] for state in TaskState},
        }

    # The service.

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._recover()
        async with trio.open_nursery() as nursery:
            for _ in range(self.limits.workers):
                nursery.start_soon(self._worker)
            nursery.start_soon(self._cleanup)
            task_status.started()

    async def _recover(self) -> None:
        """After a restart: queued tasks queue again; running ones were interrupted."""
        changed: list[Task] = []
        for task in self.repository.all():
            if task.state is TaskState.RUNNING:
                task = self._after_interruption(task)
                changed.append(task)
            self._counts[str(task.state)] += 1
            if task.state is TaskState.QUEUED:
                # A retry that was waiting out its backoff keeps waiting after a restart.
                wait = max(0.0, (task.not_before or 0.0) - time.time())
                self.queue.put(
                    task.id,
                    task.priority,
                    force=True,
                    not_before=trio.current_time() + wait if wait else None,
                )
        await self.repository.save_many(changed)
        if changed:
            log.warning("%d task(s) were running when the appliance stopped", len(changed))

    def _after_interruption(self, task: Task) -> Task:
        error = {"code": "interrupted", "message": "the appliance stopped during the run"}
        if task.attempts <= task.max_retries:
            return task.moved(TaskState.QUEUED, error=error)
        return task.moved(TaskState.FAILED, error=error, finished_at=time.time())

    async def _worker(self) -> None:
        await self.kernels_ready.wait()
        while True:
            task_id = await self.queue.get()
            borrower = object()
            await self.slots.acquire_on_behalf_of(borrower)
            slot = _HeldSlot(self.slots, borrower)
            try:
                # Read after the slot is ours: a cancel may have come while we waited.
                task = self.repository.get(task_id)
                if (
                    task is not None
                    and task.state is TaskState.QUEUED
                    and task_id not in self._cancelling
                ):
                    await self._run(task, slot)
            finally:
                if not slot.handed_to_thread:
                    self.slots.release_on_behalf_of(borrower)

    async def _run(self, task: Task, slot: _HeldSlot) -> None:
        running = task.moved(
            TaskState.RUNNING, started_at=time.time(), attempts=task.attempts + 1, not_before=None
        )
        kernel = self.kernels[task.kernel]
        outcome: tuple[str, Any] = ("cancelled", None)
        recorded = trio.Event()
        started = time.perf_counter()
        with trio.CancelScope() as scope:
            # Registered before the first await, so a cancel from now on finds the scope.
            self._running[task.id] = (scope, recorded)
            scope.deadline = trio.current_time() + task.timeout_s
            await self._record(task, running)
            data = self.repository.input(task.id)
            try:
                outputs = await trio.to_thread.run_sync(
                    _checked_run,
                    kernel,
                    data,
                    task.params,
                    self.limits.kernel_nice,
                    limiter=slot,
                    abandon_on_cancel=True,
                )
                outcome = ("succeeded", outputs)
            except Exception as exc:  # the kernel raised in its thread
                outcome = ("error", exc)
        del self._running[task.id]
        elapsed = time.perf_counter() - started
        if scope.cancelled_caught:
            timed_out = task.id not in self._cancel_requested
            self._cancel_requested.discard(task.id)
            outcome = ("timed_out", None) if timed_out else ("cancelled", None)
        self._observe(task.kernel, outcome[0] if outcome[0] != "error" else "failed", elapsed)
        await self._finish(running, *outcome)
        recorded.set()

    async def _finish(self, task: Task, outcome: str, value: Any) -> None:
        now = time.time()
        if outcome == "succeeded":
            done = task.moved(TaskState.SUCCEEDED, finished_at=now, error=None)
            await self._record(task, done, result=outputs_to_storable(value))
        elif outcome == "timed_out":
            error = {"code": "timed_out", "message": f"no result within {task.timeout_s} s"}
            await self._record(task, task.moved(TaskState.TIMED_OUT, finished_at=now, error=error))
        elif outcome == "cancelled":
            error = {"code": "cancelled", "message": "cancelled while running"}
            await self._record(task, task.moved(TaskState.CANCELLED, finished_at=now, error=error))
        else:
            await self._fail(task, value)

    async def _fail(self, task: Task, exc: BaseException) -> None:
        error = {"code": "kernel_error", "message": f"{type(exc).__name__}: {exc}"[:500]}
        if isinstance(exc, RETRYABLE) and task.attempts <= task.max_retries:
            delay = self._backoff(task.attempts)
            retry = task.moved(TaskState.QUEUED, error=error, not_before=time.time() + delay)
            await self._record(task, retry)
            self.queue.put(
                task.id, task.priority, not_before=trio.current_time() + delay, force=True
            )
            return
        log.warning("task %s (%s) failed: %s", task.id, task.kernel, error["message"])
        await self._record(task, task.moved(TaskState.FAILED, finished_at=time.time(), error=error))

    def _backoff(self, attempts: int) -> float:
        """Full jitter: uniform in [0, min(max, base·2^(attempts-1))]."""
        ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * math.pow(2, max(attempts - 1, 0)))
        return self._rng.uniform(0, ceiling)

    async def _record(
        self, before: Task, after: Task, *, result: dict[str, Any] | None = None
    ) -> None:
        # Counted first: a cancel arriving during the save must not leave the totals behind.
        self._counts[str(before.state)] -= 1
        self._counts[str(after.state)] += 1
        await self.repository.save(after, result=result)
        if after.finished and (entry := self._finish_waiters.pop(after.id, None)):
            entry[0].set()

    async def _cleanup(self) -> None:
        while True:
            await trio.sleep(self.limits.cleanup_interval_s)
            removed = 0
            while True:  # in bounded batches, until nothing expired is left
                states = await self.repository.delete_expired(
                    self.limits.result_ttl_s, batch=EXPIRY_BATCH
                )
                self._counts.subtract(states)
                removed += len(states)
                if len(states) < EXPIRY_BATCH:
                    break
            if removed:
                log.info("removed %d expired task result(s)", removed)
