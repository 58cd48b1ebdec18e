"""The run queue: highest priority first, FIFO within a priority, retries wait their turn.

Bounded: `put` raises `QueueFull` beyond `capacity` (tasks waiting for a retry count too),
so a burst of submissions is refused with 503 instead of growing memory.
"""

from __future__ import annotations

import heapq
import itertools
import math

import trio


class QueueFull(Exception):
    pass


class RunQueue:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ready: list[tuple[int, int, str]] = []  # (-priority, seq, id)
        self._delayed: list[tuple[float, int, int, str]] = []  # (due, -priority, seq, id)
        self._seq = itertools.count()
        self._changed = trio.Event()
        self._queued: set[str] = set()  # ids in a heap and not removed
        self._removed: set[str] = set()  # ids still in a heap, to skip when they come up

    def __len__(self) -> int:
        return len(self._queued)

    def put(
        self, task_id: str, priority: int, *, not_before: float | None = None, force: bool = False
    ) -> None:
        """Queue a task; `not_before` is `trio.current_time()`-based. `force` is for tasks
        already accepted earlier (recovery, retries), which must never be dropped."""
        if not force and len(self) >= self.capacity:
            raise QueueFull(f"the task queue holds {self.capacity} tasks")
        if task_id in self._queued:
            return  # already waiting its turn
        if task_id in self._removed:
            self._removed.discard(task_id)  # its old heap entry comes back to life
            self._queued.add(task_id)
            return
        self._queued.add(task_id)
        if not_before is not None and not_before > trio.current_time():
            heapq.heappush(self._delayed, (not_before, -priority, next(self._seq), task_id))
        else:
            heapq.heappush(self._ready, (-priority, next(self._seq), task_id))
        self._changed.set()

    def remove(self, task_id: str) -> None:
        """Forget a queued task (cancelled); it is skipped when it comes up. A task that is
        not waiting here (a worker has it) is left alone."""
        if task_id in self._queued:
            self._queued.discard(task_id)
            self._removed.add(task_id)

    async def get(self) -> str:
        while True:
            now = trio.current_time()
            while self._delayed and self._delayed[0][0] <= now:
                _, negative_priority, seq, task_id = heapq.heappop(self._delayed)
                heapq.heappush(self._ready, (negative_priority, seq, task_id))
            while self._ready:
                _, _, task_id = heapq.heappop(self._ready)
                if task_id in self._removed:
                    self._removed.discard(task_id)
                    continue
                self._queued.discard(task_id)
                return task_id
            # Every waiting worker shares one event: a new one only once the last has fired
            # (replacing it under another waiter would leave that waiter asleep forever).
            if self._changed.is_set():
                self._changed = trio.Event()
            changed = self._changed
            wait = self._delayed[0][0] - now if self._delayed else math.inf
            with trio.move_on_after(wait):
                await changed.wait()
