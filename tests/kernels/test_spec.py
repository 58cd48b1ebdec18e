"""`Kernel.check_params` alone must refuse every bad parameter set: the API validates a task
with it (and `check_input`) at submission and queues it only if both pass, so a rule that
fires only inside `run` would let a bad task be accepted and fail later in a worker."""

import dataclasses

import numpy as np
import pytest

from appliance.kernels import Kernel, ParamError, load_kernels
from appliance.kernels.params import boolean, integer, schema

KERNELS = load_kernels(None)

# Per kernel with a `check`: (bad params, the one error expected), and params that only
# just pass, so a check is neither missing nor too strict.
BAD = {
    "biquad": [
        (
            {"cutoff_hz": 500.0, "sample_rate_hz": 1_000.0},
            {
                "field": "params.cutoff_hz",
                "message": "must be > 0 and < the Nyquist frequency 500 Hz (sample_rate_hz / 2)",
            },
        ),
        (
            {"cutoff_hz": 30.0, "sample_rate_hz": 48.0, "kind": "highpass"},
            {
                "field": "params.cutoff_hz",
                "message": "must be > 0 and < the Nyquist frequency 24 Hz (sample_rate_hz / 2)",
            },
        ),
    ],
    "fir": [
        (
            {"taps": [1.0, 1.0, 1.0], "state": [1.0]},
            {"field": "params.state", "message": "expected 2 items (len(taps) - 1), got 1"},
        ),
        (
            {"taps": [1.0], "state": [0.0]},
            {"field": "params.state", "message": "expected 0 items (len(taps) - 1), got 1"},
        ),
    ],
    "rolling_std": [
        ({"window": 1, "ddof": 1}, {"field": "params.ddof", "message": "must be less than window"}),
    ],
    "goertzel": [
        (  # sample_rate_hz defaults to 1: the check sees the defaults filled in
            {"frequency_hz": 0.6},
            {"field": "params.frequency_hz", "message": "must be <= sample_rate_hz / 2 = 0.5"},
        ),
        (
            {"frequency_hz": 50.5, "sample_rate_hz": 100},
            {"field": "params.frequency_hz", "message": "must be <= sample_rate_hz / 2 = 50.0"},
        ),
    ],
    "histogram": [
        (
            {"range": bad},
            {"field": "params.range", "message": "expected [lo, hi] with lo < hi"},
        )
        for bad in ([1, 1], [2, 1], [-1e308, 1e308])
    ],
    "quantiles": [
        ({"q": [0.5, 1.5]}, {"field": "params.q", "message": "item 1: must be in [0, 1]"}),
        ({"q": [-0.1]}, {"field": "params.q", "message": "item 0: must be in [0, 1]"}),
    ],
    "cusum": [
        ({"state": [0.0, -1.0]}, {"field": "params.state", "message": "sums must be >= 0"}),
    ],
}

GOOD = {
    "biquad": [{"cutoff_hz": 499.9, "sample_rate_hz": 1_000.0}],
    "fir": [{"taps": [1.0, 1.0, 1.0], "state": [1.0, 2.0]}, {"taps": [1.0], "state": []}],
    "rolling_std": [{"window": 2, "ddof": 1}, {"window": 1, "ddof": 0}],
    "goertzel": [{"frequency_hz": 0.5}, {"frequency_hz": 50, "sample_rate_hz": 100}],
    "histogram": [{"range": [0, 1]}, {"range": [-1e307, 1e307]}, {}],
    "quantiles": [{"q": [0, 0.5, 1]}],
    "cusum": [{"state": [0.0, 0.0]}, {}],
}


def _refuse_to_run(x, params):
    raise AssertionError("check_params ran the kernel")


def _without_run(name):
    """The registered kernel with a `run` that fails: what check_params does, alone."""
    return dataclasses.replace(KERNELS[name], run=_refuse_to_run)


def test_every_check_has_cases():
    with_check = {name for name, kernel in KERNELS.items() if kernel.check is not None}
    assert with_check == set(BAD) == set(GOOD)


@pytest.mark.parametrize(
    ("name", "params", "error"),
    [(name, params, error) for name, cases in BAD.items() for params, error in cases],
)
def test_check_params_refuses_without_running(name, params, error):
    with pytest.raises(ParamError) as caught:
        _without_run(name).check_params(params)
    assert caught.value.errors == [error]


@pytest.mark.parametrize(
    ("name", "params"), [(name, params) for name, cases in GOOD.items() for params in cases]
)
def test_check_params_accepts_the_edge(name, params):
    _without_run(name).check_params(params)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_example_params_pass(name):
    kernel = _without_run(name)
    checked = kernel.check_params(kernel.example["params"])
    assert set(kernel.example["params"]) <= set(checked)


def test_check_sees_validated_params_and_runs_last():
    seen = []

    def check(params):
        seen.append(params)
        if params["a"] > params["b"]:
            raise ParamError([{"field": "params.a", "message": "must be <= b"}])

    kernel = Kernel(
        name="toy",
        summary="",
        params=schema({"a": integer(0, default=1), "b": integer(0, default=2)}),
        output={},
        run=_refuse_to_run,
        example={"params": {}, "input": []},
        check=check,
    )
    assert kernel.check_params(None) == {"a": 1, "b": 2}
    assert seen == [{"a": 1, "b": 2}]
    with pytest.raises(ParamError) as caught:
        kernel.check_params({"a": 3})
    assert caught.value.errors == [{"field": "params.a", "message": "must be <= b"}]
    with pytest.raises(ParamError) as schema_error:  # the schema fails first: no check
        kernel.check_params({"a": -1, "b": 0})
    assert [error["field"] for error in schema_error.value.errors] == ["params.a"]
    assert len(seen) == 2
    with pytest.raises(AssertionError, match="ran the kernel"):
        kernel(np.zeros(1), {})


def test_boolean_param():
    assert boolean() == {"type": "boolean"}
    assert boolean(default=False, description="d") == {
        "type": "boolean",
        "default": False,
        "description": "d",
    }
    kurtosis = KERNELS["kurtosis"]
    assert kurtosis.params["properties"]["fisher"]["type"] == "boolean"
    assert kurtosis.check_params({}) == {"fisher": True}
    with pytest.raises(ParamError) as caught:
        kurtosis.check_params({"fisher": 1})
    assert caught.value.errors == [{"field": "params.fisher", "message": "expected true or false"}]
