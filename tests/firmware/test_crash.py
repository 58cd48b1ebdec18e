"""SIGKILL the slot manager at any point: the box always comes back on a bootable slot.

Two sweeps with real processes and real SIGKILL: a fixed update script killed just before
each of its file system steps in turn (every crash point, deterministically), and random
operations killed after random delays on one root that lives through all the kills.
After each kill:

- the state decodes, and no state the process was told was written is lost;
- `current` points at a complete slot, and every slot marked complete holds exactly
  the tree of its version;
- after `on_start` (the next start) the link equals the state's current slot, the
  current and good slots hold their versions, the current version is not a failed one,
  and the GRUB mirror agrees with the state.

The roots live on a tmpfs when there is one (/dev/shm): a SIGKILL leaves the page cache
to the next process, so fsync takes no part in what these tests prove, and on a disk its
cost would make the sweep slow. Power loss is the fsync's job; docs/firmware.md says
which fsync covers which step.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware import GrubEnvFile, SlotManager, boot_variables
from tests.firmware.trees import first_install, install, verify_tree

REPO = Path(__file__).resolve().parents[2]
RANDOM_ROUNDS = 40
MAX_SCRIPT_POINTS = 60
pytestmark = pytest.mark.slow


def child(root: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.firmware.crash_child", str(root), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def acknowledged_seq(output: bytes) -> int:
    seqs = [
        int(parts[2])
        for parts in (line.split() for line in output.decode().splitlines())
        if len(parts) == 3 and parts[0] == "ack"
    ]
    return max(seqs, default=0)


def manager_for(root: Path) -> SlotManager:
    return SlotManager(root, boot_env=GrubEnvFile(root / "grubenv"))


def check_after_crash(root: Path, acknowledged: int) -> None:
    manager = manager_for(root)
    status = manager.status()  # raises if no copy of the state decodes
    assert status.seq >= acknowledged, f"lost an acknowledged state: {status}"
    assert status.phase in ("committed", "trial")
    link = os.readlink(root / "current")
    assert status.slot(link).complete, f"current -> {link}, which is not complete: {status}"
    for info in status.slots:  # a completion marker never describes a partial tree
        if info.complete:
            verify_tree(root / info.name, info.version)
    assert GrubEnvFile(root / "grubenv").load()  # never torn

    report = manager.on_start()  # the next start repairs whatever the crash left
    state = manager.state()
    assert os.readlink(root / "current") == state.current == report.current
    verify_tree(root / "current", state.versions[state.current])
    verify_tree(root / state.good, state.versions[state.good])
    assert not state.is_denied(state.versions[state.current])
    variables = GrubEnvFile(root / "grubenv").load()
    assert {k: variables[k] for k in boot_variables(state)} == boot_variables(state)


def prove_usable(root: Path, version: str) -> None:
    """A whole update still works after the crash."""
    manager = manager_for(root)
    if manager.state().pending is not None:
        manager.commit()
    slot = install(manager, version)
    manager.mark_pending(slot, version, tries=1)
    manager.on_start()
    manager.commit()
    verify_tree(root / "current", version)


@pytest.fixture
def crash_dir(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix="firmware-crash-", dir=shm))
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.fixture
def base_root(crash_dir: Path) -> Path:
    root = crash_dir / "base"
    first_install(manager_for(root), "1.0.0")
    return root


def test_crash_points_spread_over_an_update_script(crash_dir, base_root):
    dry = crash_dir / "dry"
    shutil.copytree(base_root, dry, symlinks=True)
    run = child(dry, "script", "0")
    output, errors = run.communicate(timeout=120)
    assert run.returncode == 0, errors.decode()
    steps = int(output.decode().split("steps ")[1])
    assert steps > 50, "the script should cross many crash points"
    points = range(1, steps + 1)
    if steps > MAX_SCRIPT_POINTS:  # spread evenly, both ends kept
        points = sorted(
            {1 + (steps - 1) * i // (MAX_SCRIPT_POINTS - 1) for i in range(MAX_SCRIPT_POINTS)}
        )

    for point in points:
        root = crash_dir / f"kill{point}"
        shutil.copytree(base_root, root, symlinks=True)
        run = child(root, "script", str(point))
        output, errors = run.communicate(timeout=120)
        assert run.returncode == -signal.SIGKILL, (point, errors.decode())
        check_after_crash(root, acknowledged_seq(output))
        prove_usable(root, "7.0.0")
        shutil.rmtree(root)


def test_random_kills_during_random_operations(base_root):
    rng = random.Random(20261123)
    acks = 0
    for round_number in range(RANDOM_ROUNDS):
        run = child(base_root, "random", str(round_number), str(rng.randrange(2**32)))
        assert run.stdout is not None
        first = run.stdout.readline()
        assert first == b"started\n", run.communicate(timeout=30)[1].decode()
        time.sleep(rng.uniform(0.0, 0.3))
        run.send_signal(signal.SIGKILL)
        output, errors = run.communicate(timeout=30)
        assert run.returncode == -signal.SIGKILL, errors.decode()
        acks += output.count(b"ack ")
        check_after_crash(base_root, acknowledged_seq(output))
    assert acks >= RANDOM_ROUNDS, "the children did almost nothing: the test proves little"
    prove_usable(base_root, "99.0.0")
