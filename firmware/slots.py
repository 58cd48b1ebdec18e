"""The A/B slot manager, directory backend: the file operations around the state machine.

Under one root directory (`/opt/appliance` on a box, a temp dir in tests):

    a/  b/                 one installed tree of the application each
    a.complete b.complete  completion markers: {"slot", "version"}, written atomically
                           after the tree is fsynced; a slot without one is not bootable
    current -> a           the symlink systemd's ExecStart= goes through
    state/boot.0 boot.1    two copies of the boot state (`firmware.record`)
    state/lock             flock held by every read-modify-write

Every operation takes the lock, reads the newest valid copy of the state, asks
`firmware.transitions` for the next state (which refuses illegal moves before anything
is touched), then writes in this order: the state (into the older copy), the `current`
link if it no longer matches, the boot environment mirror if one is configured. The state
is the truth; the link and the mirror are derived from it and repaired on the next
operation if a crash came between the writes. Files are written with
`firmware.durable` (temp file, fsync, rename, fsync of the directory).

A write that fails (an error the caller lives on to report, not a crash) is undone for the
operations whose callers act on the outcome (`mark_pending`, `commit`, `rollback`,
`adopt`: `_save_or_undo`): the state read before is written back and the link and mirror
follow it, so the next start does what the reported failure says. `commit` rechecks the
completion marker of the slot on trial and refuses (`slot_incomplete`) when it is gone.

The methods are synchronous and short (a few fsyncs; `mark_complete` fsyncs a whole
tree, outside the lock); the appliance calls them through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from firmware import transitions
from firmware.bootloader import BootEnvironment, boot_variables
from firmware.durable import (
    clear_dir,
    fsync_dir,
    read_link,
    state_lock,
    switch_symlink,
    sync_tree,
    write_atomic,
)
from firmware.errors import FirmwareError, NoRoot, Refused, StateError
from firmware.record import decode_state, encode_state
from firmware.state import (
    SLOTS,
    BootState,
    FailedVersion,
    check_reason,
    check_slot,
    check_version,
    other_slot,
)
from firmware.status import CopyHealth, Status, build_status
from firmware.transitions import StartAction

__all__ = ["DEFAULT_TRIES", "RESTART_INTO_OTHER_SLOT", "SlotManager", "StartReport"]

# The exit status with which the appliance asks systemd to start it again, now from the
# other slot: after `mark_pending` switched `current` to a new install, or after
# `on_start` rolled back. 75 is EX_TEMPFAIL ("try again"); the unit lists it in
# `SuccessExitStatus=` (not a failure) and `RestartForceExitStatus=` (always restart).
RESTART_INTO_OTHER_SLOT = 75
DEFAULT_TRIES = 3
_COPIES = ("boot.0", "boot.1")


@dataclass(frozen=True)
class StartReport:
    """What `on_start` decided, for the starting process to act on and log."""

    action: StartAction
    current: str
    version: str
    tries_left: int
    rolled_back: FailedVersion | None = None  # the version given up by this start
    recovered: bool = False  # every stored copy was unreadable; rebuilt from the slots

    @property
    def exit_code(self) -> int | None:
        """The status to exit with right away, or None to go on starting."""
        return RESTART_INTO_OTHER_SLOT if self.action is StartAction.RESTART else None


@dataclass(frozen=True)
class _Loaded:
    state: BootState
    copies: tuple[CopyHealth, ...]
    newest: int | None  # index of the copy `state` came from


class SlotManager:
    def __init__(
        self,
        root: Path,
        *,
        boot_env: BootEnvironment | None = None,
        clock: Callable[[], float] = time.time,
        lock_timeout: float = 10.0,
    ) -> None:
        self.root = Path(root)
        self.boot_env = boot_env
        self.clock = clock
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"SlotManager({str(self.root)!r})"

    # --- paths -----------------------------------------------------------------------

    def slot_dir(self, slot: str) -> Path:
        return self.root / check_slot(slot)

    @property
    def current_link(self) -> Path:
        return self.root / "current"

    def _marker(self, slot: str) -> Path:
        return self.root / f"{slot}.complete"

    def slot_of(self, path: Path) -> str | None:
        """The slot `path` lives in (links resolved), or None: e.g. `slot_of(sys.prefix)`
        is the slot the running interpreter was started from."""
        resolved = Path(path).resolve()
        for slot in SLOTS:
            if resolved.is_relative_to(self.slot_dir(slot).resolve()):
                return slot
        return None

    # --- reading ---------------------------------------------------------------------

    def _installed(self) -> dict[str, str | None]:
        """The version each completion marker names (None: the slot is not complete)."""
        installed: dict[str, str | None] = {}
        for slot in SLOTS:
            try:
                marker = json.loads(self._marker(slot).read_bytes())
                installed[slot] = (
                    check_version(marker["version"]) if marker["slot"] == slot else None
                )
            except Exception:  # missing, torn or foreign: not complete, whatever the cause
                installed[slot] = None
        return installed

    def _load(self) -> _Loaded:
        if not self.root.is_dir():
            raise NoRoot("no_root", f"no slot root directory at {self.root}")
        copies: list[CopyHealth] = []
        best: BootState | None = None
        newest: int | None = None
        for index, name in enumerate(_COPIES):
            try:
                state = decode_state((self.root / "state" / name).read_bytes())
            except FileNotFoundError:
                copies.append("missing")
                continue
            except StateError as exc:
                copies.append(exc.code)
                continue
            copies.append("ok")
            if best is None or state.seq > best.seq:
                best, newest = state, index
        if best is None:
            if any(health != "missing" for health in copies):
                raise StateError("state_corrupt", f"no readable boot state copy: {copies}")
            best = BootState()
        return _Loaded(best, tuple(copies), newest)

    def status(self) -> Status:
        loaded = self._load()
        return build_status(
            str(self.root),
            loaded.state,
            installed=self._installed(),
            link=read_link(self.current_link),
            copies=loaded.copies,
        )

    def state(self) -> BootState:
        return self._load().state

    def inactive_slot(self) -> str:
        """The slot not pointed at by the state's `current` (`a` before any install)."""
        current = self._load().state.current
        return SLOTS[0] if current is None else other_slot(current)

    def is_denied(self, version: str) -> bool:
        return self._load().state.is_denied(version)

    # --- writing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if not self.root.is_dir():
            raise NoRoot("no_root", f"no slot root directory at {self.root}")
        if not (self.root / "state").is_dir():
            (self.root / "state").mkdir(exist_ok=True)
            fsync_dir(self.root)
        with state_lock(self.root / "state" / "lock", self.lock_timeout):
            yield

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_Loaded]:
        with self._lock():
            yield self._load()

    def _save(self, loaded: _Loaded, new: BootState) -> BootState:
        """Write `new` if it differs, then bring the link and the mirror in line."""
        if new != loaded.state or loaded.newest is None:
            new = dataclasses.replace(new, seq=loaded.state.seq + 1)
            target = 1 - loaded.newest if loaded.newest is not None else 0
            write_atomic(self.root / "state" / _COPIES[target], encode_state(new))
        if new.current is not None and read_link(self.current_link) != new.current:
            switch_symlink(self.current_link, new.current)
        if self.boot_env is not None:
            self.boot_env.update(boot_variables(new))
        return new

    def _save_or_undo(self, loaded: _Loaded, new: BootState) -> BootState:
        """`_save`, all or nothing, for an operation whose caller acts on its outcome
        (`mark_pending`, `commit`, `rollback`, `adopt`): if any write fails (the state, the
        link switch, the mirror), the state `loaded` held is written back and the link and
        the mirror follow it again, then the error is raised. So a failed operation
        changes nothing, and the failure its caller reports is the truth: without this, a
        state written before a failed link switch would still be acted on at the next
        start (`on_start` repairs the link from the state).

        If putting the old state back fails too, the error is raised with a note, and the
        stored state is whatever it is now: the caller must read `status()` to know what
        the next start will do."""
        try:
            return self._save(loaded, new)
        except (OSError, FirmwareError) as exc:
            try:
                now = self._load()
                self._save(now, dataclasses.replace(loaded.state, seq=now.state.seq))
            except (OSError, FirmwareError) as undo:
                exc.add_note(
                    f"the previous boot state could not be put back ({undo}); the stored "
                    "state stands and the next start follows it"
                )
            raise

    def staging_dir(self, slot: str) -> Path:
        """Empty `slot` for a new install and return its directory. Refused for the
        running or good slot, and while an update is on trial."""
        with self._locked() as loaded:
            new = transitions.begin_install(loaded.state, slot)
            self._save(loaded, new)
            with contextlib.suppress(FileNotFoundError):
                self._marker(slot).unlink()
                fsync_dir(self.root)
            clear_dir(self.slot_dir(slot))
        return self.slot_dir(slot)

    def mark_complete(self, slot: str, version: str) -> None:
        """The tree in `slot` is whole: fsync it, then write its completion marker."""
        transitions.finish_install(self._load().state, slot, version)  # refuse early
        if not self.slot_dir(slot).is_dir():
            raise Refused("slot_incomplete", f"slot {slot} has no directory to complete")
        sync_tree(self.slot_dir(slot))
        with self._locked() as loaded:
            new = transitions.finish_install(loaded.state, slot, version)
            marker = json.dumps({"slot": slot, "version": version}, sort_keys=True)
            write_atomic(self._marker(slot), marker.encode("ascii") + b"\n")
            self._save(loaded, new)

    def adopt(self, slot: str, version: str) -> BootState:
        """The first install: the complete `slot` becomes current and good."""
        with self._locked() as loaded:
            new = transitions.adopt(loaded.state, slot, version, self._installed())
            return self._save_or_undo(loaded, new)

    def mark_pending(self, slot: str, version: str, tries: int = DEFAULT_TRIES) -> BootState:
        """Switch `current` to the freshly installed `slot`, on trial for `tries` starts.
        The caller then exits with RESTART_INTO_OTHER_SLOT.

        All or nothing (`_save_or_undo`): when the state is written but the link cannot be
        switched (an I/O error, a full disk), the state is put back, so the box stays on
        the good slot and the next start does not boot the new one. Only if that fails
        too may the switch stand (the error carries a note; `status()` says)."""
        with self._locked() as loaded:
            new = transitions.mark_pending(loaded.state, slot, version, tries, self._installed())
            return self._save_or_undo(loaded, new)

    def on_start(self, running_slot: str | None = None) -> StartReport:
        """Call first thing when the application starts, before it does any work.

        On trial, one try is used (durably) now; with none left, or the slot no longer
        complete, `current` goes back to the good slot and the version is recorded as
        failed. `running_slot` is the slot the caller runs from (`slot_of(sys.prefix)`):
        when it is not `current` afterwards, the report's action is RESTART and its
        `exit_code` RESTART_INTO_OTHER_SLOT. None means the caller runs whatever
        `current` points at after this call (systemd's ExecStartPre=)."""
        if running_slot is not None:
            check_slot(running_slot)
        with self._lock():
            try:
                loaded, recovered = self._load(), False
            except StateError as exc:
                if exc.code != "state_corrupt":
                    raise
                loaded, recovered = self._recover(), True
            decision = transitions.decide_start(
                loaded.state,
                running=running_slot,
                installed=self._installed(),
                at=int(self.clock()),
            )
            new = self._save(loaded, decision.state)
        assert new.current is not None
        return StartReport(
            action=decision.action,
            current=new.current,
            version=new.versions[new.current] or "",
            tries_left=new.tries_left,
            rolled_back=decision.rolled_back,
            recovered=recovered,
        )

    def _recover(self) -> _Loaded:
        """Both copies are unreadable: rebuild the state from the slots on disk. The slot
        the link points at (else any complete one) becomes current and good; the list of
        failed versions is lost (the appliance's store keeps its own denylist)."""
        installed = self._installed()
        link = read_link(self.current_link)
        candidates = [link] if link in SLOTS and installed.get(link) else []
        candidates += [slot for slot in SLOTS if installed[slot]]
        if not candidates:
            raise StateError("state_corrupt", "no readable boot state and no complete slot")
        slot = candidates[0]
        state = BootState(seq=0, current=slot, good=slot, versions=dict(installed))
        return _Loaded(state, ("recovered", "recovered"), None)

    def commit(self) -> BootState:
        """The slot on trial is good. Refused when nothing is pending (`no_pending`), or
        when the slot on trial is no longer complete (`slot_incomplete`: its completion
        marker is gone, torn or names another version): it stays on trial, and the next
        start gives it up and goes back to the good slot."""
        with self._locked() as loaded:
            new = transitions.commit(loaded.state, self._installed())
            return self._save_or_undo(loaded, new)

    def rollback(self, reason: str = "manual rollback") -> FailedVersion:
        """Back to the good slot (on trial) or the previous good slot (committed); the
        version left is recorded as failed. The caller then exits with
        RESTART_INTO_OTHER_SLOT if it runs from the slot it left."""
        check_reason(reason)
        with self._locked() as loaded:
            new = transitions.rollback(
                loaded.state,
                cause="manual",
                detail=reason,
                at=int(self.clock()),
                installed=self._installed(),
            )
            self._save_or_undo(loaded, new)
        return new.failed[-1]
