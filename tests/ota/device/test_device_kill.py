"""SIGKILL at random points of an install: the box always comes back on a bootable slot.

One box, RUNS updates in a row (1.1.0, 1.2.0, ...: each newer than anything before, so a
run's outcome never blocks the next), each with an 8 MiB filler so that there is an
install to interrupt, and each ended by SIGKILL: after a random number of bytes of the
upload, or a random time after the box accepted it (while it fsyncs the tree, writes the
completion marker, switches, or stops). Then the test plays systemd (`firmware boot`, a
start from `current`) and checks that the appliance answers `/health` with the version of
the slot `current` points at, that slot is complete and committed, and the job tells the
truth: `failed`/`interrupted` when the box is still on the version before, `committed`
when it runs the new one. The restarted process is the one the next run kills.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.ota.device.box import OLD, Box

pytestmark = pytest.mark.slow
RUNS = 8
FILLER = 8 << 20
SEED = 6


def kill(process) -> None:
    if process.proc.poll() is None:
        os.kill(process.proc.pid, signal.SIGKILL)
        process.proc.wait(30)


def upload_then_kill(box: Box, process, data: bytes, rng: random.Random) -> str:
    headers = {
        "Authorization": f"Bearer {process.token}",
        "Content-Type": "application/octet-stream",
    }
    moment = rng.choice(("upload", "switch", "stop"))
    if moment == "upload":
        cut = rng.randrange(len(data))

        def chunks() -> Iterator[bytes]:
            yield data[:cut]
            kill(process)
            yield data[cut:]

        try:
            httpx.post(f"{box.url}/api/v1/ota/bundles", content=chunks(), headers=headers)
        except httpx.HTTPError:
            pass
        return f"killed after {cut} of {len(data)} bytes sent"
    response = httpx.post(
        f"{box.url}/api/v1/ota/bundles", content=data, headers=headers, timeout=60
    )
    assert response.status_code == 202, response.text
    # The tree's fsync, the marker and the switch take some 0.05 s after the 202 here.
    delay = rng.uniform(0.0, 0.06) if moment == "switch" else rng.uniform(0.06, 0.5)
    time.sleep(delay)
    kill(process)
    return f"killed {delay:.3f} s after the 202"


def committed(box: Box) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = box.status()
        if state["phase"] == "committed":
            return state
        time.sleep(0.05)
    raise AssertionError(f"still on trial: {state}")


def test_sigkill_during_installs_always_leaves_a_bootable_box(make_box, trees):
    rng = random.Random(SEED)
    box = make_box(slot_a=trees.old)
    box.boot_step()
    process = box.start()
    running = OLD
    for run in range(RUNS):
        version = f"1.{run + 1}.0"
        data = trees.bundle(version, filler=FILLER).read_bytes()
        where = f"run {run} ({version}): " + upload_then_kill(box, process, data, rng)

        box.boot_step()  # systemd: Restart= after the kill, ExecStartPre= first
        process = box.start()
        state = committed(box)
        current = next(slot for slot in state["slots"] if slot["name"] == state["current"])
        assert current["complete"], (where, state)
        health = httpx.get(f"{box.url}/api/v1/health", timeout=10).json()
        assert health["version"] == current["version"] == state["current_version"], where
        assert health["version"] in (running, version), where

        with httpx.Client(
            base_url=box.url, headers={"Authorization": f"Bearer {process.token}"}, timeout=10
        ) as http:
            job = http.get("/api/v1/ota/status").json()["last_job"]
        updated = health["version"] == version
        if job is not None and job["version"] in (None, version):  # None: before the header
            expected = ("committed", None) if updated else ("failed", "interrupted")
            assert (job["state"], job["code"]) == expected, (where, job)
        else:  # killed before this run's job was stored: no trace, and nothing changed
            assert not updated, where
        running = health["version"]
    assert process.stop() == 0
