"""What `SlotManager.status()` reports, built from facts without I/O (`build_status`).

The JSON form (`Status.to_json()`) is what `firmware status --json` prints and what the
appliance serves at `GET /api/v1/ota/status`; its keys are a contract (docs/firmware.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from firmware.state import SLOTS, BootState, FailedVersion

__all__ = ["CopyHealth", "SlotInfo", "Status", "build_status"]

# Per stored copy of the boot state: "ok", "missing", or the StateError code that made
# it unreadable (e.g. "state_checksum" for a torn or corrupt copy).
CopyHealth = str


@dataclass(frozen=True)
class SlotInfo:
    name: str
    version: str | None  # named by the slot's completion marker; None: not complete
    complete: bool
    roles: tuple[str, ...]  # any of: current, good, pending, previous_good, linked
    denied: bool  # its version failed on this box

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "complete": self.complete,
            "roles": list(self.roles),
            "denied": self.denied,
        }


@dataclass(frozen=True)
class Status:
    root: str
    phase: str
    current: str | None
    good: str | None
    pending: str | None
    previous_good: str | None
    tries_left: int
    link: str | None  # where the `current` symlink points now
    slots: tuple[SlotInfo, ...]
    failed: tuple[FailedVersion, ...]
    seq: int
    copies: tuple[CopyHealth, ...]

    @property
    def current_version(self) -> str | None:
        return None if self.current is None else self.slot(self.current).version

    def slot(self, name: str) -> SlotInfo:
        return next(info for info in self.slots if info.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "phase": self.phase,
            "current": self.current,
            "current_version": self.current_version,
            "good": self.good,
            "pending": self.pending,
            "previous_good": self.previous_good,
            "tries_left": self.tries_left,
            "link": self.link,
            "slots": [info.to_json() for info in self.slots],
            "failed": [
                {
                    "version": f.version,
                    "slot": f.slot,
                    "cause": f.cause,
                    "detail": f.detail,
                    "at": f.at,
                    "retried": False,
                }
                for f in self.failed
            ],
            "seq": self.seq,
            "copies": list(self.copies),
        }


def build_status(
    root: str,
    state: BootState,
    *,
    installed: Mapping[str, str | None],
    link: str | None,
    copies: tuple[CopyHealth, ...],
) -> Status:
    slots = []
    for name in SLOTS:
        roles = tuple(
            role
            for role, holder in (
                ("current", state.current),
                ("good", state.good),
                ("pending", state.pending),
                ("previous_good", state.previous_good),
                ("linked", link),
            )
            if holder == name
        )
        version = installed.get(name)
        denied = version is not None and state.is_denied(version)
        slots.append(SlotInfo(name, version, version is not None, roles, denied))
    return Status(
        root=root,
        phase=str(state.phase),
        current=state.current,
        good=state.good,
        pending=state.pending,
        previous_good=state.previous_good,
        tries_left=state.tries_left,
        link=link,
        slots=tuple(slots),
        failed=state.failed,
        seq=state.seq,
        copies=copies,
    )
