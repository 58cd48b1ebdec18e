"""Tasks over HTTP: formats in and out, every bad input refused with nothing queued."""

from __future__ import annotations

import base64
import time

import cbor2
import numpy as np
import pytest


def wait_finished(http, task_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = http.get(f"/api/v1/tasks/{task_id}").json()
        if task["finished"]:
            return task
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} did not finish")


@pytest.fixture(scope="module")
def admin(shared_appliance):
    with shared_appliance.client(shared_appliance.token) as http:
        yield http


def test_json_list_in_json_and_cbor_out(admin):
    response = admin.post(
        "/api/v1/tasks",
        json={"kernel": "ewma", "params": {"alpha": 0.5}, "input": [1.0, 2.0, 3.0], "priority": 7},
    )
    assert response.status_code == 202
    task = response.json()
    assert (task["state"], task["priority"], task["input_samples"]) == ("queued", 7, 3)
    done = wait_finished(admin, task["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 1
    result = admin.get(f"/api/v1/tasks/{task['id']}/result").json()
    assert result["outputs"] == {"y": [1.0, 1.5, 2.25], "state": 2.25}
    raw = admin.get(f"/api/v1/tasks/{task['id']}/result", headers={"Accept": "application/cbor"})
    assert raw.headers["content-type"] == "application/cbor"
    outputs = cbor2.loads(raw.content)["outputs"]
    y = np.frombuffer(outputs["y"]["data"], dtype="<f8")
    assert outputs["y"]["dtype"] == "float64" and y.tolist() == [1.0, 1.5, 2.25]


def test_typed_base64_and_cbor_bodies(admin):
    samples = np.array([3.0, -4.0, 3.0, -4.0], dtype=np.float32)
    typed = {
        "dtype": "float32",
        "shape": [4],
        "data": base64.b64encode(samples.astype("<f4").tobytes()).decode(),
    }
    first = admin.post("/api/v1/tasks", json={"kernel": "rms", "input": typed})
    assert first.status_code == 202 and first.json()["input_dtype"] == "float32"
    body = {
        "kernel": "rms",
        "input": {"dtype": "float32", "shape": [4], "data": samples.astype("<f4").tobytes()},
    }
    second = admin.post(
        "/api/v1/tasks", content=cbor2.dumps(body), headers={"Content-Type": "application/cbor"}
    )
    assert second.status_code == 202
    for response in (first, second):
        done = wait_finished(admin, response.json()["id"])
        result = admin.get(f"/api/v1/tasks/{done['id']}/result").json()
        assert result["outputs"]["rms"] == pytest.approx(3.5355339059327378)


def test_nan_in_json_results_is_null(admin):
    task = admin.post("/api/v1/tasks", json={"kernel": "rms", "input": []}).json()
    wait_finished(admin, task["id"])
    assert admin.get(f"/api/v1/tasks/{task['id']}/result").json()["outputs"] == {"rms": None}


def test_idempotency_key_over_http(admin):
    body = {"kernel": "rms", "input": [1.0], "idempotency_key": "http-once"}
    first = admin.post("/api/v1/tasks", json=body)
    again = admin.post("/api/v1/tasks", json={**body, "input": [2.0, 3.0]})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]


def f64(values) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f8").tobytes()).decode()


BAD = [
    ({"kernel": "nope", "input": [1]}, 422, "unknown_kernel"),
    ({"kernel": "ewma", "params": {"alpha": 2}, "input": [1]}, 422, "invalid_params"),
    ({"kernel": "ewma", "params": {"alpha": "x"}, "input": [1]}, 422, "invalid_params"),
    ({"kernel": "ewma", "params": {"beta": 1}, "input": [1]}, 422, "invalid_params"),
    ({"kernel": "ewma", "params": [], "input": [1]}, 422, "validation_failed"),
    (
        {"kernel": "rms", "input": {"dtype": "int32", "shape": [1], "data": "AAAAAA=="}},
        422,
        "unsupported_dtype",
    ),
    (
        {"kernel": "rms", "input": {"dtype": "float64", "shape": [3], "data": f64([1, 2])}},
        422,
        "shape_mismatch",
    ),
    (
        {"kernel": "rms", "input": {"dtype": "float64", "shape": [2, 1], "data": f64([1, 2])}},
        422,
        "bad_shape",
    ),
    (
        {"kernel": "rms", "input": {"dtype": "float64", "shape": [1], "data": "%%%"}},
        422,
        "bad_base64",
    ),
    ({"kernel": "rms", "input": [1, None]}, 422, "bad_input"),
    (
        {"kernel": "rms", "input": {"dtype": "float64", "shape": [10**9], "data": ""}},
        413,
        "input_too_large",
    ),
    (
        {
            "kernel": "fir",
            "params": {"taps": [1.0]},
            "input": {"dtype": "float64", "shape": [2], "data": f64([1, float("nan")])},
        },
        422,
        "nonfinite_input",
    ),
    ({"kernel": "rms", "input": [1], "priority": 10}, 422, "validation_failed"),
    ({"kernel": "rms", "input": [1], "priority": -1}, 422, "validation_failed"),
    ({"kernel": "rms", "input": [1], "timeout_s": 0}, 422, "validation_failed"),
    ({"kernel": "rms", "input": [1], "timeout_s": 10**6}, 422, "validation_failed"),
    ({"kernel": "rms", "input": [1], "max_retries": 11}, 422, "validation_failed"),
    ({"kernel": "rms", "input": [1], "surprise": 1}, 422, "validation_failed"),
    ({"input": [1]}, 422, "validation_failed"),
]


@pytest.mark.parametrize(
    ("body", "status", "code"), BAD, ids=[f"{i}-{code}" for i, (_, _, code) in enumerate(BAD)]
)
def test_bad_submissions_queue_nothing(admin, assert_problem, body, status, code):
    before = admin.get("/api/v1/scheduler").json()["totals"]
    listed = len(admin.get("/api/v1/tasks", params={"limit": 1000}).json()["tasks"])
    assert_problem(admin.post("/api/v1/tasks", json=body), status, code)
    assert admin.get("/api/v1/scheduler").json()["totals"] == before
    assert len(admin.get("/api/v1/tasks", params={"limit": 1000}).json()["tasks"]) == listed


def test_malformed_cbor_and_wrong_media(admin, assert_problem):
    assert_problem(
        admin.post(
            "/api/v1/tasks", content=b"\xff\xff\x00", headers={"Content-Type": "application/cbor"}
        ),
        400,
        "malformed_cbor",
    )
    assert_problem(
        admin.post("/api/v1/tasks", content=b"kernel=rms", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )


def test_task_lookups_and_cancel_errors(admin, assert_problem):
    assert_problem(admin.get("/api/v1/tasks/unknown"), 404, "task_not_found")
    assert_problem(admin.get("/api/v1/tasks/unknown/result"), 404, "task_not_found")
    assert_problem(admin.post("/api/v1/tasks/unknown/cancel"), 404, "task_not_found")
    assert_problem(admin.get("/api/v1/kernels/unknown"), 404, "kernel_not_found")
    task = admin.post("/api/v1/tasks", json={"kernel": "rms", "input": [1.0]}).json()
    wait_finished(admin, task["id"])
    assert_problem(admin.post(f"/api/v1/tasks/{task['id']}/cancel"), 409, "task_finished")
    assert_problem(
        admin.get("/api/v1/tasks", params={"state": "sleeping"}), 422, "validation_failed"
    )


def test_kernel_metadata(admin):
    names = [k["name"] for k in admin.get("/api/v1/kernels").json()["kernels"]]
    assert {
        "rms",
        "ewma",
        "sma",
        "rolling_std",
        "biquad",
        "fir",
        "spectrum",
        "goertzel",
        "zscore_flags",
        "cusum",
        "peaks",
        "lttb",
        "histogram",
        "quantiles",
        "peak_to_peak",
        "crest_factor",
        "kurtosis",
    } <= set(names)
    ewma = admin.get("/api/v1/kernels/ewma").json()
    assert ewma["params"]["properties"]["alpha"]["maximum"] == 1.0
    assert ewma["input"]["dtypes"] == ["float32", "float64"]
    assert "y" in ewma["output"]


@pytest.mark.parametrize("before", ["a\x00b", "x" * 600, "../../etc", "é"])
def test_bad_paging_ids_are_refused(admin, assert_problem, before):
    assert_problem(admin.get("/api/v1/tasks", params={"before": before}), 422, "validation_failed")


def test_large_results_come_back_whole(admin):
    """A multi-million-sample result (encoded in a worker thread) arrives complete."""
    samples = np.random.default_rng(3).random(3_000_000)
    body = {
        "kernel": "ewma",
        "params": {"alpha": 0.5},
        "input": {"dtype": "float64", "shape": [samples.size], "data": samples.tobytes()},
    }
    task = admin.post(
        "/api/v1/tasks", content=cbor2.dumps(body), headers={"Content-Type": "application/cbor"}
    ).json()
    wait_finished(admin, task["id"])
    result = admin.get(f"/api/v1/tasks/{task['id']}/result", timeout=120)
    assert len(result.json()["outputs"]["y"]) == samples.size
