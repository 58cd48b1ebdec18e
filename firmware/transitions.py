"""The boot state machine: a table of legal moves, and pure functions that make them.

Nothing here touches a file. The slot manager gathers the facts (the state, which version
each slot's completion marker names, where the `current` link points, which slot the
caller runs from, the time), calls one of these functions, then writes what it returns.

    EMPTY ──adopt──▶ COMMITTED ──mark_pending──▶ TRIAL ──commit──▶ COMMITTED
                      │  ▲  ▲                     │ │
                      │  │  └─start: tries out ───┘ │   (back to good, version failed)
                      │  └────rollback (manual) ────┘
                      └─rollback (manual, to previous_good)

`install` (begin or finish writing a tree into the slot that is not in use) keeps the
phase. A move the table does not list raises `Refused` with the code in `REFUSALS`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass

from firmware.errors import Refused
from firmware.state import (
    MAX_FAILED,
    BootState,
    FailedVersion,
    Phase,
    check_reason,
    check_slot,
    check_tries,
    check_version,
)

__all__ = [
    "REFUSALS",
    "TRANSITIONS",
    "Event",
    "StartAction",
    "StartDecision",
    "adopt",
    "begin_install",
    "commit",
    "decide_start",
    "finish_install",
    "mark_pending",
    "rollback",
]

# What each slot's completion marker names: a version, or None when the slot is not
# completely installed. Gathered by the slot manager from the disk.
Installed = Mapping[str, str | None]


class Event(enum.StrEnum):
    INSTALL = "install"
    ADOPT = "adopt"
    MARK_PENDING = "mark_pending"
    START = "start"
    COMMIT = "commit"
    ROLLBACK = "rollback"


TRANSITIONS: dict[tuple[Phase, Event], frozenset[Phase]] = {
    (Phase.EMPTY, Event.INSTALL): frozenset({Phase.EMPTY}),
    (Phase.EMPTY, Event.ADOPT): frozenset({Phase.COMMITTED}),
    (Phase.COMMITTED, Event.INSTALL): frozenset({Phase.COMMITTED}),
    (Phase.COMMITTED, Event.MARK_PENDING): frozenset({Phase.TRIAL}),
    (Phase.COMMITTED, Event.START): frozenset({Phase.COMMITTED}),
    (Phase.COMMITTED, Event.ROLLBACK): frozenset({Phase.COMMITTED}),
    (Phase.TRIAL, Event.START): frozenset({Phase.TRIAL, Phase.COMMITTED}),
    (Phase.TRIAL, Event.COMMIT): frozenset({Phase.COMMITTED}),
    (Phase.TRIAL, Event.ROLLBACK): frozenset({Phase.COMMITTED}),
}

_NOT_INITIALIZED = ("not_initialized", "no slot is installed yet (adopt a first install)")
_PENDING = ("update_pending", "an update is on trial: commit or roll it back first")
_ADOPTED = ("already_initialized", "a slot is installed already")
REFUSALS: dict[tuple[Phase, Event], tuple[str, str]] = {
    (Phase.EMPTY, Event.MARK_PENDING): _NOT_INITIALIZED,
    (Phase.EMPTY, Event.START): _NOT_INITIALIZED,
    (Phase.EMPTY, Event.COMMIT): _NOT_INITIALIZED,
    (Phase.EMPTY, Event.ROLLBACK): _NOT_INITIALIZED,
    (Phase.COMMITTED, Event.ADOPT): _ADOPTED,
    (Phase.COMMITTED, Event.COMMIT): ("no_pending", "nothing is pending: nothing to commit"),
    (Phase.TRIAL, Event.INSTALL): _PENDING,
    (Phase.TRIAL, Event.ADOPT): _ADOPTED,
    (Phase.TRIAL, Event.MARK_PENDING): _PENDING,
}


def _require(state: BootState, event: Event) -> None:
    if (state.phase, event) not in TRANSITIONS:
        code, message = REFUSALS[state.phase, event]
        raise Refused(code, message)


def _moved(before: BootState, event: Event, after: BootState) -> BootState:
    allowed = TRANSITIONS[before.phase, event]
    if after.phase not in allowed:  # a bug here, not bad input
        raise AssertionError(f"{event} moved {before.phase} to {after.phase}")
    return after


def _with_version(state: BootState, slot: str, version: str | None) -> dict[str, str | None]:
    return {**state.versions, slot: version}


def _failed(state: BootState, failure: FailedVersion) -> tuple[FailedVersion, ...]:
    return (*state.failed, failure)[-MAX_FAILED:]


def _check_installable(state: BootState, slot: str) -> None:
    check_slot(slot)
    if slot in (state.current, state.good):
        raise Refused("slot_in_use", f"slot {slot} is the running or the good slot")


def begin_install(state: BootState, slot: str) -> BootState:
    """Before a tree is written into `slot`: it holds no version from now on."""
    _require(state, Event.INSTALL)
    _check_installable(state, slot)
    previous = None if state.previous_good == slot else state.previous_good
    after = dataclasses.replace(
        state, versions=_with_version(state, slot, None), previous_good=previous
    )
    return _moved(state, Event.INSTALL, after)


def finish_install(state: BootState, slot: str, version: str) -> BootState:
    """After the tree in `slot` is complete and its marker written."""
    _require(state, Event.INSTALL)
    _check_installable(state, slot)
    check_version(version)
    previous = None if state.previous_good == slot else state.previous_good
    after = dataclasses.replace(
        state, versions=_with_version(state, slot, version), previous_good=previous
    )
    return _moved(state, Event.INSTALL, after)


def _check_installed(installed: Installed, slot: str, version: str) -> None:
    if installed.get(slot) is None:
        raise Refused("slot_incomplete", f"slot {slot} holds no completely installed tree")
    if installed[slot] != version:
        raise Refused(
            "version_mismatch", f"slot {slot} holds version {installed[slot]}, not {version}"
        )


def adopt(state: BootState, slot: str, version: str, installed: Installed) -> BootState:
    """The first install: `slot` becomes current and good without a trial."""
    _require(state, Event.ADOPT)
    check_slot(slot)
    check_version(version)
    _check_installed(installed, slot, version)
    after = dataclasses.replace(
        state, current=slot, good=slot, versions=_with_version(state, slot, version)
    )
    return _moved(state, Event.ADOPT, after)


def mark_pending(
    state: BootState, slot: str, version: str, tries: int, installed: Installed
) -> BootState:
    """Make the freshly installed `slot` current, on trial for `tries` starts."""
    _require(state, Event.MARK_PENDING)
    check_slot(slot)
    check_version(version)
    check_tries(tries)
    if slot == state.current:
        raise Refused("slot_in_use", f"slot {slot} is the running slot")
    _check_installed(installed, slot, version)
    if state.is_denied(version):
        raise Refused("version_denied", f"version {version} failed on this box before")
    after = dataclasses.replace(
        state,
        current=slot,
        pending=slot,
        tries_left=tries,
        previous_good=None,
        versions=_with_version(state, slot, version),
    )
    return _moved(state, Event.MARK_PENDING, after)


def commit(state: BootState, installed: Installed) -> BootState:
    """The pending slot proved itself: it is good; the old good slot is the fallback.
    Refused (`slot_incomplete`) when the pending slot's completion marker no longer names
    its version (gone, torn, or another version's): a slot that is not complete never
    becomes the good one; the next start gives it up."""
    _require(state, Event.COMMIT)
    assert state.current is not None  # on trial
    if installed.get(state.current) != state.versions[state.current]:
        raise Refused(
            "slot_incomplete",
            f"slot {state.current} no longer holds version {state.versions[state.current]} "
            "completely: not committed",
        )
    after = dataclasses.replace(
        state, good=state.current, pending=None, tries_left=0, previous_good=state.good
    )
    return _moved(state, Event.COMMIT, after)


def rollback(
    state: BootState, *, cause: str, detail: str, at: int, installed: Installed
) -> BootState:
    """Leave the current slot for the good one (on trial) or the previous good one
    (committed); the version left behind is recorded as failed and never retried."""
    _require(state, Event.ROLLBACK)
    check_reason(detail)
    assert state.current is not None and state.good is not None  # not EMPTY
    if state.phase is Phase.TRIAL:
        target = state.good
        if cause == "manual" and installed.get(target) != state.versions[target]:
            raise Refused("slot_incomplete", f"slot {target} no longer holds its version")
    else:
        if state.previous_good is None:
            raise Refused("no_fallback", "no previous good slot to roll back to")
        target = state.previous_good
        if installed.get(target) != state.versions[target]:
            raise Refused("slot_incomplete", f"slot {target} no longer holds its version")
    left = state.versions[state.current]
    assert left is not None
    failure = FailedVersion(version=left, slot=state.current, cause=cause, detail=detail, at=at)
    after = dataclasses.replace(
        state,
        current=target,
        good=target,
        pending=None,
        tries_left=0,
        previous_good=None,
        failed=_failed(state, failure),
    )
    return _moved(state, Event.ROLLBACK, after)


class StartAction(enum.StrEnum):
    RUN = "run"  # start normally
    TRIAL = "trial"  # start, check health, commit once healthy
    RESTART = "restart"  # the caller runs from the wrong slot: exit RESTART_INTO_OTHER_SLOT


@dataclass(frozen=True)
class StartDecision:
    action: StartAction
    state: BootState
    rolled_back: FailedVersion | None = None  # the version given up by this start


def decide_start(
    state: BootState, *, running: str | None, installed: Installed, at: int
) -> StartDecision:
    """What a starting process does. `running` is the slot the caller runs from, or None
    for a caller that runs from no slot and starts whatever `current` points at next
    (e.g. a systemd ExecStartPre=). A try is used before the caller does any work."""
    _require(state, Event.START)
    if running is not None:
        check_slot(running)

    def outcome(after: BootState, rolled_back: FailedVersion | None = None) -> StartDecision:
        _moved(state, Event.START, after)
        if running is not None and running != after.current:
            return StartDecision(StartAction.RESTART, after, rolled_back)
        trial = after.phase is Phase.TRIAL
        return StartDecision(StartAction.TRIAL if trial else StartAction.RUN, after, rolled_back)

    if state.phase is Phase.COMMITTED:
        return outcome(state)
    if running is not None and running != state.current:
        return outcome(state)  # started from the old slot: restart into the pending one first
    assert state.current is not None
    version = state.versions[state.current]
    if installed.get(state.current) != version:
        cause, detail = "slot_incomplete", f"slot {state.current} is not completely installed"
    elif state.tries_left == 0:
        cause, detail = "tries_exhausted", "every start of the version failed before commit"
    else:
        return outcome(dataclasses.replace(state, tries_left=state.tries_left - 1))
    after = rollback(state, cause=cause, detail=detail, at=at, installed=installed)
    return outcome(after, after.failed[-1])
