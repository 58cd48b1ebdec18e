"""The whole update with real processes: `ota push` streams a bundle of a newer appliance
to a box that runs from its slot `a`; the box installs it into `b`, switches and exits 75;
the test plays systemd (the `firmware boot` step, then a start from `current`); the new
version becomes healthy and commits, or crashes until its tries run out and the box is
back on the old version. The store's data survives either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.ota.device.box import OLD, Box, wait_exit

OTA = str(Path(sys.executable).with_name("ota"))
pytestmark = pytest.mark.slow
CONFIG_KEY = "fleet/app/prod/limits"


def start_push(box: Box, bundle: Path, token: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [OTA, "push", str(bundle), "--box", box.url, "--timeout", "120"],
        env={**os.environ, "APPLIANCE_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(push: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = push.communicate(timeout=150)
    return push.returncode, out + err


def admin(box: Box, token: str) -> httpx.Client:
    return httpx.Client(base_url=box.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def write_data(box: Box, token: str) -> str:
    """Something in the store before the update: a viewer token and a config version."""
    with admin(box, token) as http:
        created = http.post("/api/v1/auth/tokens", json={"name": "kept", "role": "viewer"})
        assert created.status_code == 201, created.text
        put = http.post(
            f"/api/v1/config/{CONFIG_KEY}/versions",
            json={"format": "json", "content": '{"rate": 7}'},
        )
        assert put.status_code == 201, put.text
    return created.json()["token"]


def data_intact(box: Box, viewer: str) -> None:
    with admin(box, viewer) as http:
        me = http.get("/api/v1/auth/me")
        assert me.status_code == 200 and me.json()["name"] == "kept"
        config = http.get(f"/api/v1/config/{CONFIG_KEY}")
        assert config.status_code == 200 and config.json() == {"rate": 7}


def health(box: Box) -> dict:
    response = httpx.get(f"{box.url}/api/v1/health", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_newer_version_installs_restarts_commits_and_keeps_the_data(make_box, trees):
    box = make_box(slot_a=trees.old)
    box.boot_step()
    old = box.start()
    assert health(box)["version"] == OLD
    viewer = write_data(box, old.token)

    push = start_push(box, trees.bundle("1.1.0"), old.token)
    assert wait_exit(old) == 75  # RESTART_INTO_OTHER_SLOT, after a graceful stop
    state = box.status()
    assert (state["phase"], state["current"], state["pending"]) == ("trial", "b", "b")
    assert state["tries_left"] == 3

    assert "on trial" in box.boot_step()  # ExecStartPre=: one try used before the code runs
    assert box.status()["tries_left"] == 2
    new = box.start()
    code, output = finish(push)
    assert code == 0, output
    assert "committed 1.1.0" in output and "1 of 1 boxes updated" in output

    assert health(box)["version"] == "1.1.0"
    state = box.status()
    assert (state["phase"], state["current"], state["good"]) == ("committed", "b", "b")
    assert state["previous_good"] == "a"
    data_intact(box, viewer)
    with admin(box, new.token) as http:
        status = http.get("/api/v1/ota/status").json()
    assert status["running"] == {"version": "1.1.0", "slot": "b", "trial": False}
    assert status["floor"] == "1.1.0"
    assert status["last_job"]["state"] == "committed"
    assert status["time_high_water"] > 0
    assert new.stop() == 0


def test_a_version_that_crashes_is_given_up_and_never_retried(make_box, trees):
    box = make_box(slot_a=trees.old, ota_tries="2")
    box.boot_step()
    old = box.start()
    viewer = write_data(box, old.token)
    bundle = trees.bundle("1.2.0", crash=True)

    push = start_push(box, bundle, old.token)
    assert wait_exit(old) == 75
    crashes = 0
    for boot, process in box.systemd(max_starts=4):
        try:
            process.wait_ready()
            break
        except AssertionError:
            assert process.proc.returncode not in (0, 75)
            assert "on trial" in boot
            crashes += 1
    assert crashes == 2  # ota.tries
    assert "gave up (tries_exhausted)" in boot

    code, output = finish(push)
    assert code == 1, output
    assert "rolled_back 1.2.0: tries_exhausted" in output
    assert health(box)["version"] == OLD
    state = box.status()
    assert (state["phase"], state["current"], state["good"]) == ("committed", "a", "a")
    assert [(f["version"], f["cause"]) for f in state["failed"]] == [("1.2.0", "tries_exhausted")]
    data_intact(box, viewer)
    with admin(box, process.token) as http:
        status = http.get("/api/v1/ota/status").json()
    assert status["denylist"][0]["version"] == "1.2.0"
    assert status["denylist"][0]["cause"] == "tries_exhausted"
    assert status["denylist"][0]["retried"] is False
    assert status["last_job"]["state"] == "rolled_back"
    assert status["floor"] == OLD

    again = start_push(box, bundle, process.token)
    code, output = finish(again)
    assert code == 1 and "refused: denied_version" in output, output
    assert box.status()["seq"] == state["seq"]


def test_a_version_that_never_becomes_healthy_in_time_is_rolled_back(make_box, trees):
    """`ota.trial_timeout_s` (1 s) shorter than `ota.healthy_s` (30 s): the start of the
    new version gives up and exits 1, and the boot step, its one try spent, rolls back."""
    box = make_box(slot_a=trees.old, ota_tries="1", ota_healthy_s="30", ota_trial_timeout_s="1")
    box.boot_step()
    old = box.start()
    push = start_push(box, trees.bundle("1.1.0"), old.token)
    assert wait_exit(old) == 75
    starts = box.systemd(max_starts=2)
    boot, process = next(starts)  # its one try (ota.tries = 1)
    assert "on trial" in boot
    assert wait_exit(process) == 1
    assert "was not healthy for 30 s within 1 s" in process.log()
    boot, process = next(starts)
    assert "gave up (tries_exhausted)" in boot
    process.wait_ready()
    assert health(box)["version"] == OLD
    code, output = finish(push)
    assert code == 1 and "rolled_back 1.1.0: tries_exhausted" in output, output
