"""Task lifecycle: states, the transition table, and the task record.

    queued ──▶ running ──▶ succeeded | failed | timed_out | cancelled
      │  ▲        │
      │  └────────┘  (a retryable failure or an interrupted run goes back to queued)
      └──▶ cancelled

Illegal transitions raise `IllegalTransition`; docs/architecture.md draws the same table.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any


class TaskState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.CANCELLED}),
    TaskState.RUNNING: frozenset(
        {
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.CANCELLED,
            TaskState.TIMED_OUT,
            TaskState.QUEUED,
        }
    ),
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
    TaskState.TIMED_OUT: frozenset(),
}
FINISHED = frozenset(state for state, nexts in TRANSITIONS.items() if not nexts)


class IllegalTransition(Exception):
    """A change of state the lifecycle does not allow (a bug, not a user error)."""


def new_task_id() -> str:
    """Time-ordered: 12 hex digits of milliseconds then 8 random hex digits."""
    return f"{int(time.time() * 1000):012x}{os.urandom(4).hex()}"


@dataclass(frozen=True)
class Task:
    id: str
    kernel: str
    params: dict[str, Any]
    priority: int
    timeout_s: float
    max_retries: int
    created_at: float
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    idempotency_key: str | None = None
    submitted_by: str = ""
    input_samples: int = 0
    input_dtype: str = "float64"
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float | None = None  # a retry waits until then (wall clock)
    error: dict[str, str] | None = None
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def moved(self, state: TaskState, **changes: Any) -> Task:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"task {self.id}: {self.state} -> {state}")
        entry = {"state": str(state), "at": time.time()}
        if changes.get("error"):
            entry["error"] = changes["error"]["code"]
        return replace(self, state=state, history=(*self.history, entry)[-20:], **changes)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_record(self) -> dict[str, Any]:
        # Shallow on purpose: asdict deep-copies params (a 1024-tap filter is 1024 floats)
        # on every read of a task, and nothing here mutates what it shares.
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["state"] = str(self.state)
        record["history"] = list(self.history)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Task:
        return cls(
            **{
                **record,
                "state": TaskState(record["state"]),
                "history": tuple(record.get("history", ())),
            }
        )

    def public(self) -> dict[str, Any]:
        record = self.to_record()
        record["finished"] = self.finished
        return record
