"""The real `firmware` command, run as a process: output, JSON and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firmware import GrubEnvFile, SlotManager
from tests.firmware.trees import first_install, install, write_tree

FIRMWARE = Path(sys.executable).parent / "firmware"


def firmware(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    environment.update(env or {})
    return subprocess.run(
        [str(FIRMWARE), *args], env=environment, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "slots"
    first_install(SlotManager(root), "1.0.0")
    return root


def test_help_and_usage():
    assert FIRMWARE.exists(), "reinstall: .venv/bin/pip install -e . --no-deps"
    shown = firmware("--help")
    assert shown.returncode == 0
    assert "status" in shown.stdout and "rollback" in shown.stdout
    assert firmware("frobnicate").returncode == 2
    assert firmware().returncode == 2


def test_status_text_and_json(root):
    shown = firmware("status", "--root", str(root))
    assert shown.returncode == 0, shown.stderr
    assert "phase:    committed" in shown.stdout
    assert "slot a:   1.0.0" in shown.stdout and "current, good, linked" in shown.stdout

    as_json = firmware("status", "--json", env={"APPLIANCE_FIRMWARE_ROOT": str(root)})
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["root"] == str(root)
    assert (status["phase"], status["current"], status["current_version"]) == (
        "committed",
        "a",
        "1.0.0",
    )
    assert status["slots"][1] == {
        "name": "b",
        "version": None,
        "complete": False,
        "roles": [],
        "denied": False,
    }
    assert status["copies"] == ["ok", "ok"] and status["failed"] == []


def test_init_adopts_a_copied_tree(tmp_path):
    root = tmp_path / "fresh"
    write_tree(root / "a", "2.0.0")
    done = firmware("init", "--root", str(root), "--slot", "a", "--version", "2.0.0")
    assert done.returncode == 0, done.stderr
    assert os.readlink(root / "current") == "a"
    again = firmware("init", "--root", str(root), "--slot", "a", "--version", "2.0.0")
    assert again.returncode == 3
    assert again.stderr == "firmware: already_initialized: a slot is installed already\n"
    (tmp_path / "empty").mkdir()
    bad = firmware("init", "--root", str(tmp_path / "empty"), "--slot", "b", "--version", "../2")
    assert bad.returncode == 2 and "bad_version" in bad.stderr


def test_commit_without_pending_is_refused(root):
    before = (root / "state" / "boot.0").read_bytes(), (root / "state" / "boot.1").read_bytes()
    refused = firmware("commit", "--root", str(root))
    assert refused.returncode == 3
    assert refused.stderr == "firmware: no_pending: nothing is pending: nothing to commit\n"
    after = (root / "state" / "boot.0").read_bytes(), (root / "state" / "boot.1").read_bytes()
    assert after == before


def test_boot_commit_and_rollback(root, tmp_path):
    manager = SlotManager(root)
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0", tries=2)
    grubenv = tmp_path / "grubenv"

    boot = firmware("boot", "--root", str(root), "--grubenv", str(grubenv))
    assert boot.returncode == 0, boot.stderr
    assert boot.stdout == "slot b (version 1.1.0) on trial, 1 tries left after this one\n"
    assert GrubEnvFile(grubenv).load()["boot_tries_left"] == "1"

    committed = firmware("commit", "--root", str(root))
    assert committed.returncode == 0, committed.stderr
    assert committed.stdout == "committed slot b (version 1.1.0)\n"

    rolled = firmware("rollback", "--root", str(root), "--reason", "readings drift")
    assert rolled.returncode == 0, rolled.stderr
    assert "from slot b (version 1.1.0, now denied) to slot a (version 1.0.0)" in rolled.stdout
    status = json.loads(firmware("status", "--json", "--root", str(root)).stdout)
    assert status["current"] == "a" and status["slots"][1]["denied"] is True
    assert [(f["version"], f["cause"], f["detail"]) for f in status["failed"]] == [
        ("1.1.0", "manual", "readings drift")
    ]
    shown = firmware("status", "--root", str(root)).stdout
    assert "failed:   1.1.0 (slot b, manual, " in shown and "not retried" in shown

    again = firmware("rollback", "--root", str(root))
    assert again.returncode == 3 and again.stderr.startswith("firmware: no_fallback: ")


def test_boot_after_the_last_try_rolls_back(root):
    manager = SlotManager(root)
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0", tries=1)
    assert firmware("boot", "--root", str(root)).returncode == 0
    gave_up = firmware("boot", "--root", str(root))
    assert gave_up.returncode == 0
    assert gave_up.stdout == (
        "version 1.1.0 in slot b gave up (tries_exhausted); booting slot a (version 1.0.0)\n"
    )
    assert os.readlink(root / "current") == "a"


def test_failures_exit_1_with_their_code(root, tmp_path):
    missing = firmware("status", "--root", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and missing.stderr.startswith("firmware: no_root: ")
    for name in ("boot.0", "boot.1"):
        (root / "state" / name).write_bytes(b"appliance-boot-state 1\nsha256:00\n{}\n")
    corrupt = firmware("status", "--root", str(root))
    assert corrupt.returncode == 1 and corrupt.stderr.startswith("firmware: state_corrupt: ")
