"""Long polls on tasks (`?wait=S`): held until the task ends, the wait runs out or the
appliance stops; a bad `wait` is refused."""

from __future__ import annotations

import signal
import threading
import time

import cbor2
import numpy as np
import pytest

from tests.conftest import ApplianceProcess

# One kernel slot, kept busy by "hogs" (the longest fir the limits allow: 1024 taps over 8M
# samples, several seconds of a core each) at the top priority, so a task queued at the
# bottom priority stays queued for as long as a test needs it to.
HOG_SAMPLES = 8 * 1024 * 1024
HOG = cbor2.dumps(
    {
        "kernel": "fir",
        "priority": 9,
        "params": {"taps": [1 / 1024] * 1024},
        "input": {
            "dtype": "float32",
            "shape": [HOG_SAMPLES],
            "data": np.ones(HOG_SAMPLES, dtype="<f4").tobytes(),
        },
    }
)


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory):
    process = ApplianceProcess(
        tmp_path_factory.mktemp("longpoll") / "data", env={"APPLIANCE_TASKS_CONCURRENCY": "1"}
    )
    process.wait_ready()
    http = process.client(process.token, timeout=60)
    for _ in range(3):
        hog = http.post("/api/v1/tasks", content=HOG, headers={"Content-Type": "application/cbor"})
        assert hog.status_code == 202
    yield process, http
    http.close()
    process.stop(signal.SIGKILL)


def queued_task(http) -> str:
    submitted = http.post("/api/v1/tasks", json={"kernel": "rms", "input": [3.0], "priority": 0})
    assert submitted.status_code == 202
    return submitted.json()["id"]


def held(http, path: str) -> tuple[threading.Thread, list]:
    """GET `path` in a thread; the list gets (response, seconds held)."""
    box: list = []

    def get() -> None:
        began = time.monotonic()
        box.append((http.get(path), time.monotonic() - began))

    thread = threading.Thread(target=get)
    thread.start()
    return thread, box


def test_a_wait_that_runs_out_returns_the_current_state(one_slot):
    _, http = one_slot
    task_id = queued_task(http)
    began = time.monotonic()
    response = http.get(f"/api/v1/tasks/{task_id}", params={"wait": "0.3"})
    assert response.status_code == 200
    assert response.json()["state"] == "queued" and not response.json()["finished"]
    assert time.monotonic() - began >= 0.3  # it was held for the whole wait
    not_yet = http.get(f"/api/v1/tasks/{task_id}/result", params={"wait": "0.1"})
    assert not_yet.status_code == 409 and not_yet.json()["code"] == "task_not_finished"


def test_a_held_poll_returns_when_the_task_ends(one_slot):
    _, http = one_slot
    task_id = queued_task(http)
    thread, box = held(http, f"/api/v1/tasks/{task_id}?wait=50")
    time.sleep(0.3)  # the poll is parked on the server
    assert box == []
    assert http.post(f"/api/v1/tasks/{task_id}/cancel").json()["state"] == "cancelled"
    thread.join(55)
    response, seconds = box[0]
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert seconds < 50  # the cancel ended it, not the wait


def test_a_stop_ends_held_polls(start_appliance):
    process = start_appliance(env={"APPLIANCE_TASKS_CONCURRENCY": "1"})
    http = process.client(process.token, timeout=60)
    hog = http.post("/api/v1/tasks", content=HOG, headers={"Content-Type": "application/cbor"})
    assert hog.status_code == 202
    task_id = queued_task(http)
    thread, box = held(http, f"/api/v1/tasks/{task_id}?wait=50")
    time.sleep(0.3)
    assert process.stop() == 0
    thread.join(55)
    response, seconds = box[0]
    assert response.status_code == 200 and response.json()["state"] == "queued"
    assert seconds < 50


def test_result_waits_for_the_task(shared_appliance):
    with shared_appliance.client(shared_appliance.token, timeout=60) as http:
        submitted = http.post("/api/v1/tasks", json={"kernel": "rms", "input": [3.0, -3.0]})
        result = http.get(f"/api/v1/tasks/{submitted.json()['id']}/result", params={"wait": 30})
    assert result.status_code == 200 and result.json()["outputs"]["rms"] == 3.0


@pytest.mark.parametrize("wait", ["-1", "61", "nan", "inf", "soon", "1e400", "", "9" * 40])
def test_bad_waits_are_refused(shared_appliance, assert_problem, wait):
    with shared_appliance.client(shared_appliance.token) as http:
        task = http.post("/api/v1/tasks", json={"kernel": "rms", "input": [1.0]}).json()
        for path in (f"/api/v1/tasks/{task['id']}", f"/api/v1/tasks/{task['id']}/result"):
            response = http.get(path, params={"wait": wait})
            assert_problem(response, 422, "validation_failed")
            assert response.json()["errors"][0]["field"] == "wait"
