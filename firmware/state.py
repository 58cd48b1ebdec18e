"""The boot state: which slot runs, which is known good, what is on trial. Values only.

`BootState` is frozen and checks its invariants when built, so a state that exists is a
state that makes sense:

- `current` is the slot the `current` link points at (once installed, never None again);
- `good` is the last known good slot: equal to `current` once committed, the other slot
  while `current` is on trial;
- `pending` is None, or equal to `current`: the freshly installed slot not yet committed,
  with `tries_left` starts before it is given up;
- `previous_good` is the slot still holding the version that was good before the last
  commit (what a manual rollback after a commit goes back to), or None once that slot
  has been reused for an install;
- `versions` is what each slot holds (None: empty, or an install is under way);
- `failed` lists versions that failed on this box (newest last), never to be retried.

The phase (`EMPTY`, `COMMITTED`, `TRIAL`) is derived, never stored.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from firmware.errors import BadArgument

__all__ = [
    "MAX_FAILED",
    "MAX_TRIES",
    "SLOTS",
    "BootState",
    "FailedVersion",
    "Phase",
    "check_reason",
    "check_slot",
    "check_tries",
    "check_version",
    "other_slot",
]

SLOTS: tuple[str, str] = ("a", "b")
MAX_TRIES = 100
# The boot state keeps the newest failures only; the appliance's store keeps the full
# denylist (docs/firmware.md, "Failed versions").
MAX_FAILED = 64
MAX_REASON = 200
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_~-]{0,63}")


class Phase(enum.StrEnum):
    EMPTY = "empty"  # nothing installed yet
    COMMITTED = "committed"  # current is the good slot
    TRIAL = "trial"  # current is pending: counting its starts


def check_slot(slot: object) -> str:
    if slot not in SLOTS:
        raise BadArgument("bad_slot", f"slot must be one of {', '.join(SLOTS)}, not {slot!r}")
    return slot  # type: ignore[return-value]


def check_version(version: object) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise BadArgument(
            "bad_version",
            f"version must be 1-64 of [0-9A-Za-z.+_~-], starting alphanumeric: {version!r}",
        )
    return version


def check_tries(tries: object) -> int:
    if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= MAX_TRIES:
        raise BadArgument("bad_tries", f"tries must be an integer 1..{MAX_TRIES}: {tries!r}")
    return tries


def check_reason(reason: object) -> str:
    if (
        not isinstance(reason, str)
        or len(reason) > MAX_REASON
        or any(ord(c) < 0x20 or c == "\x7f" for c in reason)
    ):
        raise BadArgument(
            "bad_reason", f"reason must be one line of at most {MAX_REASON} characters"
        )
    return reason


def other_slot(slot: str) -> str:
    return SLOTS[1] if check_slot(slot) == SLOTS[0] else SLOTS[0]


@dataclass(frozen=True)
class FailedVersion:
    """A version that failed on this box: never installed or started again."""

    version: str
    slot: str
    cause: str  # stable: tries_exhausted | slot_incomplete | manual
    detail: str
    at: int  # unix time, seconds

    def __post_init__(self) -> None:
        check_version(self.version)
        check_slot(self.slot)
        if self.cause not in ("tries_exhausted", "slot_incomplete", "manual"):
            raise ValueError(f"unknown failure cause {self.cause!r}")
        check_reason(self.detail)
        if isinstance(self.at, bool) or not isinstance(self.at, int) or self.at < 0:
            raise ValueError(f"failure time must be a non-negative integer: {self.at!r}")


def _no_versions() -> dict[str, str | None]:
    return dict.fromkeys(SLOTS)


@dataclass(frozen=True)
class BootState:
    seq: int = 0  # bumped on every durable write; the newest valid copy wins
    current: str | None = None
    good: str | None = None
    pending: str | None = None
    previous_good: str | None = None
    tries_left: int = 0
    versions: dict[str, str | None] = field(default_factory=_no_versions)
    failed: tuple[FailedVersion, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise ValueError(f"seq must be a non-negative integer: {self.seq!r}")
        for name in ("current", "good", "pending", "previous_good"):
            value = getattr(self, name)
            if value is not None and value not in SLOTS:
                raise ValueError(f"{name} must be a slot name or null: {value!r}")
        if sorted(self.versions) != sorted(SLOTS):
            raise ValueError(f"versions must name exactly the slots {SLOTS}")
        for version in self.versions.values():
            if version is not None:
                check_version(version)
        if (self.current is None) != (self.good is None):
            raise ValueError("current and good are both set or both null")
        if self.current is None and (self.pending or self.previous_good):
            raise ValueError("nothing can be pending or previous before an install")
        if self.pending is not None and self.pending != self.current:
            raise ValueError("the pending slot must be the current one")
        if (self.pending is None) != (self.current == self.good):
            raise ValueError("good equals current exactly when nothing is pending")
        if self.previous_good is not None and self.previous_good == self.current:
            raise ValueError("previous_good must be the slot that is not current")
        if self.previous_good is not None and self.pending is not None:
            raise ValueError("the previous good slot is reused for a pending install")
        if self.current is not None and self.versions[self.current] is None:
            raise ValueError("the current slot must have a version")
        if self.good is not None and self.versions[self.good] is None:
            raise ValueError("the good slot must have a version")
        if self.previous_good is not None and self.versions[self.previous_good] is None:
            raise ValueError("the previous good slot must have a version")
        tries_ok = not isinstance(self.tries_left, bool) and isinstance(self.tries_left, int)
        if not tries_ok or not 0 <= self.tries_left <= MAX_TRIES:
            raise ValueError(f"tries_left must be an integer 0..{MAX_TRIES}")
        if self.pending is None and self.tries_left != 0:
            raise ValueError("tries_left is 0 when nothing is pending")
        if len(self.failed) > MAX_FAILED:
            raise ValueError(f"at most {MAX_FAILED} failed versions are kept")

    @property
    def phase(self) -> Phase:
        if self.current is None:
            return Phase.EMPTY
        return Phase.TRIAL if self.pending is not None else Phase.COMMITTED

    def is_denied(self, version: str) -> bool:
        return any(failure.version == version for failure in self.failed)
