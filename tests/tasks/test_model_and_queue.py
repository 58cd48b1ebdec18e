"""The task lifecycle table, the run queue's order, and input parsing."""

import base64

import numpy as np
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from appliance.tasks import (
    FINISHED,
    TRANSITIONS,
    IllegalTransition,
    InputFormatError,
    QueueFull,
    RunQueue,
    Task,
    TaskState,
    parse_input,
)
from appliance.tasks.inputs import outputs_to_storable, storable_to_json


def make_task(**changes) -> Task:
    return Task(
        id="t1",
        kernel="rms",
        params={},
        priority=5,
        timeout_s=1.0,
        max_retries=1,
        created_at=0.0,
        **changes,
    )


def test_transition_table_is_enforced():
    for state, allowed in TRANSITIONS.items():
        for target in TaskState:
            task = make_task(state=state)
            if target in allowed:
                assert task.moved(target).state is target
            else:
                with pytest.raises(IllegalTransition):
                    task.moved(target)
    assert {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.TIMED_OUT,
    } == FINISHED


def test_records_round_trip_and_keep_history():
    task = (
        make_task()
        .moved(TaskState.RUNNING)
        .moved(TaskState.FAILED, error={"code": "kernel_error", "message": "x"})
    )
    again = Task.from_record(task.to_record())
    assert again == task
    assert [h["state"] for h in again.history] == ["running", "failed"]
    assert again.history[-1]["error"] == "kernel_error"


async def test_priority_then_fifo_and_delays(autojump_clock):
    queue = RunQueue(capacity=10)
    for name, priority in [("low", 1), ("high-1", 9), ("mid", 5), ("high-2", 9)]:
        queue.put(name, priority)
    queue.put("later", 9, not_before=trio.current_time() + 10)
    assert [await queue.get() for _ in range(4)] == ["high-1", "high-2", "mid", "low"]
    start = trio.current_time()
    assert await queue.get() == "later"
    assert trio.current_time() - start == pytest.approx(10)


async def test_removed_tasks_are_skipped_and_capacity_holds():
    queue = RunQueue(capacity=2)
    queue.put("a", 5)
    queue.put("b", 5)
    with pytest.raises(QueueFull):
        queue.put("c", 5)
    queue.put("recovered", 5, force=True)  # already accepted work is never dropped
    queue.remove("a")
    assert len(queue) == 2
    assert await queue.get() == "b"
    assert await queue.get() == "recovered"


@given(arrays(st.sampled_from([np.float32, np.float64]), st.integers(0, 200)))
def test_typed_input_round_trips(array):
    spec = {
        "dtype": array.dtype.name,
        "shape": [array.size],
        "data": base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode(),
    }
    parsed = parse_input(spec, max_samples=1000)
    assert parsed.dtype == array.dtype
    np.testing.assert_array_equal(parsed, array)
    cbor_spec = {**spec, "data": array.tobytes()}
    np.testing.assert_array_equal(parse_input(cbor_spec, max_samples=1000), array)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("nope", "bad_input"),
        ([1, "two"], "bad_input"),
        ([1, True], "bad_input"),
        ([2**70], "bad_input"),
        ({"dtype": "int8", "shape": [1], "data": "AA=="}, "unsupported_dtype"),
        ({"dtype": "float64", "shape": [2], "data": "!!!"}, "bad_base64"),
        ({"dtype": "float64", "shape": [2], "data": "AAAAAAAAAAA="}, "shape_mismatch"),
        ({"dtype": "float64", "shape": [1], "data": "A" * 400}, "shape_mismatch"),
        ({"dtype": "float64", "shape": "2", "data": ""}, "bad_shape"),
        ({"dtype": "float64", "shape": [-1], "data": ""}, "bad_shape"),
        ({"dtype": "float64", "shape": [1], "data": 5}, "bad_input"),
        ({"dtype": "float64", "shape": [1], "data": "", "extra": 1}, "bad_input"),
        (list(range(11)), "input_too_large"),
        ({"dtype": "float64", "shape": [100, 100], "data": ""}, "input_too_large"),
    ],
)
def test_bad_inputs_have_codes(raw, code):
    with pytest.raises(InputFormatError) as caught:
        parse_input(raw, max_samples=10)
    assert caught.value.code == code


def test_json_results_turn_nonfinite_into_null():
    stored = outputs_to_storable({"y": np.array([1.0, np.nan, np.inf]), "v": float("nan"), "n": 3})
    assert storable_to_json(stored) == {"y": [1.0, None, None], "v": None, "n": 3}
