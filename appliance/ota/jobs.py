"""An install job: its states, the table of legal moves, and how a restart settles it. Pure.

    receiving ──▶ verifying ──▶ installing ──▶ installed ──▶ rebooting ──▶ trial ──▶ committed
        │             │             │              │             │           │
        └─────────────┴─────────────┴──────────────┴─▶ failed    └───────────┴──▶ rolled_back

- `receiving`: the upload is open; the header is being read.
- `verifying`: the header is whole; signatures, then the box's policy, are checked.
- `installing`: the payload streams into the inactive slot, every file hashed as written.
- `installed`: every file matched its signed hash and the tree is fsynced and marked
  complete; the switch (`mark_pending`) comes next.
- `rebooting`: `current` points at the new slot; the appliance stops and exits 75.
- `trial`: the new version runs and waits to be healthy for `ota.healthy_s`.
- `committed`, `failed` (with `code` and `detail`), `rolled_back` (with the firmware's
  cause as `code`): the end.

A job is a frozen value; `advance` makes the next one and refuses a move the table does
not list (`IllegalMove`: a bug here, not bad input). A process that dies leaves its job
where it was; the next start calls `settle` with what the slots say now, which moves the
job to where the box really is (see its docstring), so a job never claims more than the
box did.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from appliance.ota.errors import DeviceCode

__all__ = [
    "FINISHED",
    "TRANSITIONS",
    "BoxFacts",
    "IllegalMove",
    "Job",
    "JobState",
    "advance",
    "new_job",
    "settle",
]


class JobState(enum.StrEnum):
    RECEIVING = "receiving"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    INSTALLED = "installed"
    REBOOTING = "rebooting"
    TRIAL = "trial"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


S = JobState
_AFTER_SWITCH = frozenset({S.TRIAL, S.COMMITTED, S.ROLLED_BACK, S.FAILED})
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.RECEIVING: frozenset({S.VERIFYING, S.FAILED}),
    S.VERIFYING: frozenset({S.INSTALLING, S.FAILED}),
    S.INSTALLING: frozenset({S.INSTALLED, S.FAILED}),
    # `installed` may be settled straight to where the switch got to (a kill after it).
    S.INSTALLED: frozenset({S.REBOOTING}) | _AFTER_SWITCH,
    S.REBOOTING: _AFTER_SWITCH,
    S.TRIAL: frozenset({S.COMMITTED, S.ROLLED_BACK, S.FAILED}),
    S.COMMITTED: frozenset(),
    S.FAILED: frozenset(),
    S.ROLLED_BACK: frozenset(),
}
FINISHED = frozenset(state for state, moves in TRANSITIONS.items() if not moves)
# Before the switch nothing on the box points at the new slot: a job stopped there failed.
BEFORE_SWITCH = frozenset({S.RECEIVING, S.VERIFYING, S.INSTALLING})


class IllegalMove(Exception):
    """A change of state the table does not allow (a bug, not bad input)."""


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    created_at: float
    updated_at: float
    from_version: str | None = None  # what the box ran when the upload began
    version: str | None = None  # the bundle's, once its header verified
    digest: str | None = None  # sha256 of the signed manifest: names the bundle
    slot: str | None = None  # the slot installed into
    bundle_size: int | None = None  # header + payload, once the header verified
    bytes_received: int = 0
    files_total: int | None = None
    files_done: int = 0
    code: str | None = None  # why it failed or was rolled back
    detail: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["state"] = str(self.state)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Job:
        return cls(**{**record, "state": JobState(record["state"])})

    def to_json(self) -> dict[str, Any]:
        """The API's shape (docs/api.md, `GET /api/v1/ota/jobs/{id}`)."""
        fraction = None
        if self.bundle_size:
            fraction = round(min(self.bytes_received / self.bundle_size, 1.0), 4)
        return {
            "id": self.id,
            "state": str(self.state),
            "code": self.code,
            "detail": self.detail,
            "version": self.version,
            "from_version": self.from_version,
            "digest": self.digest,
            "slot": self.slot,
            "progress": {
                "bytes_received": self.bytes_received,
                "bundle_size": self.bundle_size,
                "fraction": fraction,
                "files_done": self.files_done,
                "files_total": self.files_total,
            },
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def new_job(job_id: str, from_version: str | None, *, at: float | None = None) -> Job:
    now = time.time() if at is None else at
    return Job(job_id, S.RECEIVING, now, now, from_version=from_version)


def advance(job: Job, state: JobState, *, at: float | None = None, **changes: Any) -> Job:
    """`job` moved to `state` with `changes`; `IllegalMove` if the table forbids it."""
    if state not in TRANSITIONS[job.state]:
        raise IllegalMove(f"job {job.id}: {job.state} -> {state} is not a legal move")
    return replace(job, state=state, updated_at=time.time() if at is None else at, **changes)


@dataclass(frozen=True)
class BoxFacts:
    """What the slots say at start, for `settle`."""

    phase: str  # firmware phase: empty | committed | trial
    current_version: str | None
    pending_version: str | None
    failed: Mapping[str, tuple[str, str]]  # version -> (cause, detail), from the boot state


def settle(job: Job, facts: BoxFacts, *, at: float | None = None) -> Job | None:
    """Where an unfinished job stands after a restart; None when it stays as it is.

    - stopped before the switch (receiving, verifying, installing): `failed`, code
      `interrupted` (the slot it was writing is not complete, so nothing points at it);
    - its version is in the boot state's failed list: `rolled_back`, the firmware's cause
      as code (`tries_exhausted`, `slot_incomplete`, `manual`);
    - its version is on trial: `trial` (if not already);
    - its version is current and committed: `committed`;
    - otherwise the switch never happened (killed between the marker and the switch):
      `failed`, `interrupted`.
    """
    if job.finished:
        return None
    if job.state in BEFORE_SWITCH:
        return advance(
            job,
            S.FAILED,
            at=at,
            code=DeviceCode.INTERRUPTED,
            detail=f"the appliance stopped while the job was {job.state}",
        )
    if job.version in facts.failed:
        cause, detail = facts.failed[job.version]
        return advance(job, S.ROLLED_BACK, at=at, code=cause, detail=detail)
    if facts.phase == "trial" and facts.pending_version == job.version:
        return None if job.state is S.TRIAL else advance(job, S.TRIAL, at=at)
    if facts.phase == "committed" and facts.current_version == job.version:
        return advance(job, S.COMMITTED, at=at)
    return advance(
        job,
        S.FAILED,
        at=at,
        code=DeviceCode.INTERRUPTED,
        detail="the appliance stopped before it switched to the new slot",
    )
