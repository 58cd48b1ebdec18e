"""The slot manager on real directories: install, trial, commit, rollback, refusals."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from firmware import (
    RESTART_INTO_OTHER_SLOT,
    BootEnvError,
    BootState,
    Busy,
    GrubEnvFile,
    MemoryBootEnvironment,
    NoRoot,
    Phase,
    Refused,
    SlotManager,
    StartAction,
    StateError,
)
from firmware.durable import state_lock
from tests.firmware.trees import first_install, install, verify_tree, write_tree
from tests.ota.device.faults import planted


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manager(tmp_path: Path) -> SlotManager:
    box = SlotManager(tmp_path / "slots", clock=Clock())
    first_install(box, "1.0.0")
    return box


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file's bytes and every link's target under `root` (lock file aside)."""
    found: dict[str, bytes | str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = os.readlink(path)
            elif path.is_file() and name != "lock":
                found[key] = path.read_bytes()
    return found


def test_first_install_is_current_and_good(manager):
    status = manager.status()
    assert (status.phase, status.current, status.good, status.pending) == (
        "committed",
        "a",
        "a",
        None,
    )
    assert status.link == "a" and os.readlink(manager.current_link) == "a"
    assert status.current_version == "1.0.0"
    assert status.slot("a").roles == ("current", "good", "linked")
    assert status.slot("b").version is None and not status.slot("b").complete
    assert manager.inactive_slot() == "b"
    verify_tree(manager.current_link, "1.0.0")


def test_update_is_tried_then_committed(manager):
    slot = install(manager, "1.1.0")
    assert slot == "b"
    state = manager.mark_pending("b", "1.1.0", tries=3)
    assert (state.phase, state.current, state.good, state.tries_left) == (Phase.TRIAL, "b", "a", 3)
    assert os.readlink(manager.current_link) == "b"

    # The old process still runs from a: it must restart, and that uses no try.
    report = manager.on_start(running_slot="a")
    assert report.action is StartAction.RESTART
    assert report.exit_code == RESTART_INTO_OTHER_SLOT == 75
    assert manager.state().tries_left == 3

    report = manager.on_start(running_slot="b")
    assert (report.action, report.current, report.version, report.tries_left) == (
        StartAction.TRIAL,
        "b",
        "1.1.0",
        2,
    )
    assert report.exit_code is None
    assert manager.state().tries_left == 2  # used durably, before the app does anything

    state = manager.commit()
    assert (state.phase, state.current, state.good, state.previous_good) == (
        Phase.COMMITTED,
        "b",
        "b",
        "a",
    )
    assert manager.on_start(running_slot="b").action is StartAction.RUN
    verify_tree(manager.current_link, "1.1.0")


def test_tries_exhausted_roll_back_and_deny_the_version(manager):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0", tries=2)
    assert manager.on_start("b").tries_left == 1
    last = manager.on_start("b")
    assert (last.action, last.tries_left) == (StartAction.TRIAL, 0)  # the last try runs

    manager.clock.now += 60
    report = manager.on_start("b")
    assert report.action is StartAction.RESTART
    assert report.exit_code == RESTART_INTO_OTHER_SLOT
    assert (report.current, report.version) == ("a", "1.0.0")
    failed = report.rolled_back
    assert failed is not None
    assert (failed.version, failed.slot, failed.cause, failed.at) == (
        "1.1.0",
        "b",
        "tries_exhausted",
        1_700_000_060,
    )
    assert os.readlink(manager.current_link) == "a"
    assert manager.is_denied("1.1.0") and not manager.is_denied("1.0.0")
    status = manager.status()
    assert (status.phase, status.current, status.good, status.pending) == (
        "committed",
        "a",
        "a",
        None,
    )
    assert status.slot("b").denied
    assert status.to_json()["failed"][0]["retried"] is False

    assert manager.on_start("a").action is StartAction.RUN
    # The same version is never tried again, even freshly installed.
    install(manager, "1.1.0")
    with pytest.raises(Refused) as refused:
        manager.mark_pending("b", "1.1.0")
    assert refused.value.code == "version_denied"


def test_rollback_before_exec_needs_no_restart(manager):
    """systemd's ExecStartPre= runs on_start with no slot: it switches `current` and the
    ExecStart= that follows runs the good slot directly."""
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0", tries=1)
    assert manager.on_start().action is StartAction.TRIAL
    report = manager.on_start()
    assert report.action is StartAction.RUN and report.exit_code is None
    assert report.rolled_back is not None and report.rolled_back.version == "1.1.0"
    assert os.readlink(manager.current_link) == "a"


def test_manual_rollback_during_trial(manager):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0")
    manager.on_start("b")
    failure = manager.rollback("health check failed by hand")
    assert (failure.version, failure.slot, failure.cause, failure.detail) == (
        "1.1.0",
        "b",
        "manual",
        "health check failed by hand",
    )
    state = manager.state()
    assert (state.current, state.good, state.pending, state.tries_left) == ("a", "a", None, 0)
    assert os.readlink(manager.current_link) == "a"
    assert manager.is_denied("1.1.0")
    assert manager.on_start("b").action is StartAction.RESTART


def test_manual_rollback_after_commit_returns_to_previous_good(manager):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0")
    manager.on_start("b")
    manager.commit()
    failure = manager.rollback("sensor readings wrong after update")
    assert (failure.version, failure.slot) == ("1.1.0", "b")
    state = manager.state()
    assert (state.current, state.good, state.previous_good) == ("a", "a", None)
    verify_tree(manager.current_link, "1.0.0")
    with pytest.raises(Refused) as refused:  # only one step back
        manager.rollback()
    assert refused.value.code == "no_fallback"


def test_installing_over_the_previous_good_slot_drops_the_fallback(manager):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0")
    manager.commit()
    assert manager.state().previous_good == "a"
    manager.staging_dir("a")
    assert manager.state().previous_good is None
    with pytest.raises(Refused) as refused:
        manager.rollback()
    assert refused.value.code == "no_fallback"


@pytest.mark.parametrize(
    ("operation", "code"),
    [
        (lambda m: m.commit(), "no_pending"),
        (lambda m: m.rollback(), "no_fallback"),
        (lambda m: m.staging_dir("a"), "slot_in_use"),
        (lambda m: m.mark_pending("a", "1.0.0"), "slot_in_use"),
        (lambda m: m.mark_pending("b", "1.1.0"), "slot_incomplete"),
        (lambda m: m.adopt("a", "1.0.0"), "already_initialized"),
        (lambda m: m.mark_complete("a", "9.9.9"), "slot_in_use"),
    ],
)
def test_refused_operations_change_nothing(manager, operation, code):
    before = snapshot(manager.root)
    with pytest.raises(Refused) as refused:
        operation(manager)
    assert refused.value.code == code
    assert snapshot(manager.root) == before


@pytest.mark.parametrize(
    ("operation", "code"),
    [
        (lambda m: m.staging_dir("b"), "update_pending"),
        (lambda m: m.staging_dir("a"), "update_pending"),
        (lambda m: m.mark_pending("a", "1.0.0"), "update_pending"),
        (lambda m: m.mark_complete("a", "1.0.0"), "update_pending"),
    ],
)
def test_nothing_is_installed_while_on_trial(manager, operation, code):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0")
    before = snapshot(manager.root)
    with pytest.raises(Refused) as refused:
        operation(manager)
    assert refused.value.code == code
    assert snapshot(manager.root) == before


def test_bad_arguments_have_codes(manager):
    install(manager, "1.1.0")
    before = snapshot(manager.root)
    for call, code in [
        (lambda: manager.mark_pending("c", "1.1.0"), "bad_slot"),
        (lambda: manager.mark_pending("b", "1.1.0 ; rm"), "bad_version"),
        (lambda: manager.mark_pending("b", "1.1.0", tries=0), "bad_tries"),
        (lambda: manager.mark_pending("b", "1.1.0", tries=True), "bad_tries"),
        (lambda: manager.rollback("two\nlines"), "bad_reason"),
        (lambda: manager.on_start("z"), "bad_slot"),
    ]:
        with pytest.raises(Exception) as error:
            call()
        assert getattr(error.value, "code", None) == code
    assert snapshot(manager.root) == before


def test_a_half_written_slot_is_never_made_current(manager):
    write_tree(manager.staging_dir("b"), "1.1.0")  # no mark_complete: the install died
    with pytest.raises(Refused) as refused:
        manager.mark_pending("b", "1.1.0")
    assert refused.value.code == "slot_incomplete"
    manager.mark_complete("b", "1.1.0")
    with pytest.raises(Refused) as refused:
        manager.mark_pending("b", "1.2.0")
    assert refused.value.code == "version_mismatch"
    assert manager.mark_pending("b", "1.1.0").current == "b"


def test_staging_clears_the_slot_and_its_marker(manager):
    install(manager, "1.1.0")
    assert manager.status().slot("b").version == "1.1.0"
    staging = manager.staging_dir("b")
    assert staging == manager.root / "b" and list(staging.iterdir()) == []
    assert not (manager.root / "b.complete").exists()
    assert manager.state().versions["b"] is None


def test_a_pending_slot_that_lost_its_tree_is_given_up(manager):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0")
    (manager.root / "b.complete").unlink()
    report = manager.on_start("b")
    assert report.action is StartAction.RESTART
    assert report.rolled_back is not None and report.rolled_back.cause == "slot_incomplete"
    assert os.readlink(manager.current_link) == "a"


def test_a_stale_link_is_repaired_by_the_next_start(manager):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0")
    os.unlink(manager.current_link)
    os.symlink("a", manager.current_link)  # as if killed between state and link
    assert manager.status().link == "a"
    report = manager.on_start()
    assert report.action is StartAction.TRIAL
    assert os.readlink(manager.current_link) == "b"


def copy_paths(manager: SlotManager) -> list[Path]:
    return [manager.root / "state" / name for name in ("boot.0", "boot.1")]


def test_a_corrupt_copy_falls_back_to_the_other(manager):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0", tries=3)
    manager.on_start("b")
    seq = manager.state().seq
    copies = {p: p.read_bytes() for p in copy_paths(manager)}
    newest = next(p for p, data in copies.items() if f'"seq":{seq},'.encode() in data)
    data = bytearray(copies[newest])
    data[-5] ^= 0x01  # one flipped bit
    newest.write_bytes(bytes(data))

    status = manager.status()
    assert status.seq == seq - 1 and status.tries_left == 3  # the previous state
    assert sorted(status.copies) == ["ok", "state_checksum"]
    report = manager.on_start("b")  # the next write goes into the corrupt copy
    assert report.tries_left == 2
    assert manager.status().copies == ("ok", "ok")


def test_a_torn_copy_falls_back_to_the_other(manager):
    seq = manager.state().seq
    for path in copy_paths(manager):
        data = path.read_bytes()
        if f'"seq":{seq},'.encode() in data:
            path.write_bytes(data[: len(data) // 2])
    status = manager.status()
    assert status.seq == seq - 1
    assert "state_truncated" in status.copies


def test_every_copy_corrupt_is_detected_and_recovered_from_the_slots(manager):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0")
    manager.commit()
    for path in copy_paths(manager):
        path.write_bytes(b"garbage")
    with pytest.raises(StateError) as error:
        manager.status()
    assert error.value.code == "state_corrupt"
    with pytest.raises(StateError):
        manager.commit()
    report = manager.on_start("b")
    assert report.recovered
    assert (report.action, report.current, report.version) == (StartAction.RUN, "b", "1.1.0")
    state = manager.state()
    assert (state.current, state.good, state.versions) == ("b", "b", {"a": "1.0.0", "b": "1.1.0"})


def test_the_state_is_mirrored_into_a_grub_environment(tmp_path):
    grubenv = GrubEnvFile(tmp_path / "grubenv")
    grubenv.store({"saved_entry": "appliance", "timeout": "1"})
    manager = SlotManager(tmp_path / "slots", boot_env=grubenv)
    first_install(manager)
    assert grubenv.load() == {
        "saved_entry": "appliance",
        "timeout": "1",
        "boot_slot": "a",
        "good_slot": "a",
        "upgrade_available": "0",
        "boot_tries_left": "0",
    }
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0", tries=2)
    variables = grubenv.load()
    assert (variables["boot_slot"], variables["good_slot"]) == ("b", "a")
    assert (variables["upgrade_available"], variables["boot_tries_left"]) == ("1", "2")
    manager.on_start("b")
    assert grubenv.load()["boot_tries_left"] == "1"
    manager.commit()
    variables = grubenv.load()
    assert (variables["boot_slot"], variables["good_slot"], variables["upgrade_available"]) == (
        "b",
        "b",
        "0",
    )
    assert variables["saved_entry"] == "appliance"
    assert len((tmp_path / "grubenv").read_bytes()) == 1024


def test_the_mirror_is_written_only_when_it_changes(tmp_path):
    env = MemoryBootEnvironment()
    manager = SlotManager(tmp_path / "slots", boot_env=env)
    first_install(manager)
    writes = env.writes
    manager.on_start("a")
    manager.on_start("a")
    assert env.writes == writes


def test_slot_of_resolves_through_the_current_link(manager):
    assert manager.slot_of(manager.current_link / "bin" / "app") == "a"
    assert manager.slot_of(manager.root / "b" / "x") == "b"
    assert manager.slot_of(Path("/usr/bin")) is None


def test_a_held_lock_times_out_with_busy(tmp_path):
    manager = SlotManager(tmp_path / "slots", lock_timeout=0.05)
    first_install(manager)
    with state_lock(manager.root / "state" / "lock", 1.0), pytest.raises(Busy) as busy:
        manager.on_start("a")
    assert busy.value.code == "busy"
    assert manager.on_start("a").action is StartAction.RUN


def test_no_root_and_empty_root(tmp_path):
    with pytest.raises(NoRoot) as error:
        SlotManager(tmp_path / "missing").status()
    assert error.value.code == "no_root"
    empty = SlotManager(tmp_path)
    status = empty.status()
    assert (status.phase, status.current, status.copies) == ("empty", None, ("missing", "missing"))
    with pytest.raises(Refused) as refused:
        empty.on_start()
    assert refused.value.code == "not_initialized"
    assert empty.inactive_slot() == "a"


# --- a failure between the state write and the link switch (or the mirror) ------------------
#
# Injected with `planted` (tests/ota/device/faults.py): a directory where a durable write or
# a link switch creates its temp file, so the real code meets a real EISDIR. The state write
# of the operation goes into the copy that is not the newest; its undo (putting the previous
# state back) goes into the other one, the newest before the operation.


def link_temp(manager: SlotManager) -> Path:
    return manager.root / ".current.tmp"  # where switch_symlink makes the new link


def newest_copy_temp(manager: SlotManager) -> Path:
    """The temp file of the copy holding the newest state now: the write after the next
    one (an undo) goes there."""
    seq = manager.state().seq
    for path in copy_paths(manager):
        if f'"seq":{seq},'.encode() in path.read_bytes():
            return path.with_name(f".{path.name}.tmp")
    raise AssertionError("no copy holds the newest state")


def same_state(a: BootState, b: BootState) -> bool:
    return dataclasses.replace(a, seq=0) == dataclasses.replace(b, seq=0)


def test_a_failed_link_switch_leaves_the_box_on_the_good_slot(manager):
    """mark_pending wrote the state, then the link switch failed: the state is put back,
    so the failure its caller reports is what the next start does."""
    install(manager, "1.1.0")
    before = manager.state()
    with planted(link_temp(manager)), pytest.raises(OSError):
        manager.mark_pending("b", "1.1.0", tries=3)
    state = manager.state()
    assert same_state(state, before) and state.seq > before.seq  # written, then put back
    status = manager.status()
    assert (status.phase, status.current, status.link, status.pending) == (
        "committed",
        "a",
        "a",
        None,
    )
    assert status.slot("b").complete  # the install is kept, unused
    # the next start runs the good slot, as the failure said; nothing switches to b
    report = manager.on_start()
    assert (report.action, report.current, report.version) == (StartAction.RUN, "a", "1.0.0")
    assert os.readlink(manager.current_link) == "a"
    # once the fault is gone, the switch can be made again
    assert manager.mark_pending("b", "1.1.0").current == "b"
    assert os.readlink(manager.current_link) == "b"


def test_when_the_state_cannot_be_put_back_the_switch_stands(manager):
    """Link switch and undo both failed: the error says so, the stored state says trial,
    and the next start follows it (switches the link, uses a try)."""
    install(manager, "1.1.0")
    with planted(link_temp(manager), newest_copy_temp(manager)):
        with pytest.raises(OSError) as error:
            manager.mark_pending("b", "1.1.0", tries=3)
        assert any("could not be put back" in note for note in error.value.__notes__)
        status = manager.status()
        assert (status.phase, status.current, status.link) == ("trial", "b", "a")
    report = manager.on_start()
    assert (report.action, report.current, report.tries_left) == (StartAction.TRIAL, "b", 2)
    assert os.readlink(manager.current_link) == "b"


class FailingMirror(MemoryBootEnvironment):
    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    def store(self, variables: Mapping[str, str]) -> None:
        if self.broken:
            raise BootEnvError("bootenv_io", "cannot write the boot environment")
        super().store(variables)


def test_a_failed_mirror_write_undoes_the_switch(tmp_path):
    mirror = FailingMirror()
    manager = SlotManager(tmp_path / "slots", boot_env=mirror)
    first_install(manager)
    install(manager, "1.1.0")
    before, variables = manager.state(), mirror.load()
    mirror.broken = True
    with pytest.raises(BootEnvError):
        manager.mark_pending("b", "1.1.0")
    assert same_state(manager.state(), before)
    assert os.readlink(manager.current_link) == "a"  # switched, then switched back
    assert mirror.load() == variables


def test_a_failed_link_switch_undoes_a_manual_rollback(manager):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0")
    manager.on_start("b")
    before = manager.state()
    with planted(link_temp(manager)), pytest.raises(OSError):
        manager.rollback("by hand")
    assert same_state(manager.state(), before)
    assert not manager.is_denied("1.1.0")
    assert os.readlink(manager.current_link) == "b"
    assert manager.rollback("by hand").version == "1.1.0"
    assert os.readlink(manager.current_link) == "a"


def test_a_failed_link_switch_at_start_still_uses_the_try(manager):
    """on_start is not undone: the try counts before anything runs, and the link is
    repaired from the state by the next start (docs/firmware.md, "Failure modes")."""
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0", tries=3)
    os.unlink(manager.current_link)
    os.symlink("a", manager.current_link)  # as if killed between state and link
    with planted(link_temp(manager)), pytest.raises(OSError):
        manager.on_start()
    assert (manager.state().tries_left, os.readlink(manager.current_link)) == (2, "a")
    report = manager.on_start()
    assert (report.action, report.tries_left) == (StartAction.TRIAL, 1)
    assert os.readlink(manager.current_link) == "b"


# --- commit rechecks the slot on trial --------------------------------------------------------


@pytest.mark.parametrize(
    "break_marker",
    [
        pytest.param(lambda marker: marker.unlink(), id="gone"),
        pytest.param(lambda marker: marker.write_bytes(b'{"slot": "b", "vers'), id="torn"),
        pytest.param(
            lambda marker: marker.write_bytes(b'{"slot": "b", "version": "1.2.0"}\n'),
            id="other-version",
        ),
        pytest.param(
            lambda marker: marker.write_bytes(b'{"slot": "a", "version": "1.1.0"}\n'),
            id="other-slot",
        ),
    ],
)
def test_commit_refuses_a_slot_that_is_no_longer_complete(manager, break_marker):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0")
    manager.on_start("b")
    break_marker(manager.root / "b.complete")
    before = snapshot(manager.root)
    with pytest.raises(Refused) as refused:
        manager.commit()
    assert refused.value.code == "slot_incomplete"
    assert snapshot(manager.root) == before  # nothing written: still on trial
    # what the caller does next (exit 1, systemd restarts it): the next start gives the
    # slot up and boots the good, complete one
    report = manager.on_start()
    assert report.rolled_back is not None and report.rolled_back.cause == "slot_incomplete"
    assert (report.current, report.version) == ("a", "1.0.0")
    assert os.readlink(manager.current_link) == "a" and manager.status().slot("a").complete


def test_a_manual_rollback_into_an_incomplete_good_slot_is_refused(manager):
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0")
    (manager.root / "a.complete").unlink()
    before = snapshot(manager.root)
    with pytest.raises(Refused) as refused:
        manager.rollback("by hand")
    assert refused.value.code == "slot_incomplete"
    assert snapshot(manager.root) == before
