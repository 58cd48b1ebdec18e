"""Tasks survive SIGKILL: queued ones run, running ones retry or fail `interrupted`,
finished results stay readable. And a full queue answers 503 with Retry-After."""

from __future__ import annotations

import signal
import time

import cbor2
import numpy as np

SAMPLES = 8_000_000  # 1024 taps: a few seconds of one core, so the kill lands mid-run


def long_fir_body(max_retries: int, priority: int = 5) -> bytes:
    samples = np.random.default_rng(1).random(SAMPLES, dtype=np.float32)
    return cbor2.dumps(
        {
            "kernel": "fir",
            "params": {"taps": [1 / 1024] * 1024},
            "max_retries": max_retries,
            "timeout_s": 600,
            "priority": priority,
            "input": {"dtype": "float32", "shape": [samples.size], "data": samples.tobytes()},
        }
    )


def post_cbor(http, body: bytes) -> dict:
    response = http.post(
        "/api/v1/tasks", content=body, headers={"Content-Type": "application/cbor"}
    )
    assert response.status_code == 202, response.text
    return response.json()


def wait_state(http, task_id, states, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = http.get(f"/api/v1/tasks/{task_id}").json()
        if task["state"] in states:
            return task
        time.sleep(0.02)
    raise AssertionError(f"{task_id} never reached {states}")


def test_tasks_survive_sigkill(start_appliance, tmp_path):
    """One kernel thread at a time, so each kill lands on a known running task."""
    config = tmp_path / "appliance.toml"
    config.write_text("[tasks]\nconcurrency = 1\n")
    data_dir = tmp_path / "data"

    def kill_while_running(appliance, http, task_id):
        wait_state(http, task_id, {"running"})
        appliance.proc.send_signal(signal.SIGKILL)
        appliance.proc.wait()

    first = start_appliance(data_dir, config=config)
    with first.client(first.token) as http:
        finished = http.post("/api/v1/tasks", json={"kernel": "rms", "input": [3, 4, 3, 4]})
        finished = wait_state(http, finished.json()["id"], {"succeeded"})
        retried = post_cbor(http, long_fir_body(max_retries=1, priority=5))
        queued = http.post("/api/v1/tasks", json={"kernel": "rms", "input": [1.0]}).json()
        given_up = post_cbor(http, long_fir_body(max_retries=0, priority=9))
        assert http.get(f"/api/v1/tasks/{queued['id']}").json()["state"] == "queued"
        kill_while_running(first, http, retried["id"])

    # After the first kill the highest priority runs first: the task with no retries left.
    second = start_appliance(data_dir, config=config)
    with second.client(second.token) as http:
        assert http.get(f"/api/v1/tasks/{retried['id']}").json()["state"] == "queued"
        kill_while_running(second, http, given_up["id"])

    third = start_appliance(data_dir, config=config)
    with third.client(third.token) as http:
        assert http.get(f"/api/v1/tasks/{finished['id']}/result").json()["outputs"] == {
            "rms": 3.5355339059327378
        }
        gave_up = http.get(f"/api/v1/tasks/{given_up['id']}").json()
        assert gave_up["state"] == "failed" and gave_up["error"]["code"] == "interrupted"
        assert gave_up["attempts"] == 1
        again = wait_state(http, retried["id"], {"succeeded", "failed"})
        assert again["state"] == "succeeded" and again["attempts"] == 2
        assert "interrupted" in [h.get("error") for h in again["history"]]
        assert wait_state(http, queued["id"], {"succeeded"})["attempts"] == 1
        raw = http.get(
            f"/api/v1/tasks/{retried['id']}/result", headers={"Accept": "application/cbor"}
        )
        assert cbor2.loads(raw.content)["outputs"]["y"]["shape"] == [SAMPLES]
    assert third.stop() == 0


def test_a_full_queue_answers_503(start_appliance, tmp_path, assert_problem_shape):
    config = tmp_path / "appliance.toml"
    config.write_text("[tasks]\nconcurrency = 1\nmax_queue = 2\n")
    appliance = start_appliance(config=config)
    with appliance.client(appliance.token) as http:
        blocker = post_cbor(http, long_fir_body(max_retries=0))
        wait_state(http, blocker["id"], {"running"})
        for _ in range(2):
            response = http.post("/api/v1/tasks", json={"kernel": "rms", "input": [1.0]})
            assert response.status_code == 202
        full = http.post("/api/v1/tasks", json={"kernel": "rms", "input": [1.0]})
        assert_problem_shape(full, 503, "queue_full")
        assert int(full.headers["retry-after"]) >= 1
        status = http.get("/api/v1/scheduler").json()
        assert status["queue_depth"] == 2 and status["queue_capacity"] == 2
        assert status["running"] == 1 and status["capacity"] == 1
        http.post(f"/api/v1/tasks/{blocker['id']}/cancel")
    assert appliance.stop() == 0
