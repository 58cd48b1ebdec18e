"""Streaming statistics over a window of samples: one pass, O(1) memory."""

from __future__ import annotations

import numpy as np
from numba import njit

from appliance.kernels.params import number, schema
from appliance.kernels.registry import register
from appliance.kernels.spec import InputRules, Kernel, Outputs


@njit(nogil=True, cache=True)
def _rms(x):
    if x.size == 0:
        return np.nan
    total = 0.0
    for value in x:
        total += np.float64(value) * np.float64(value)
    return np.sqrt(total / x.size)


def run_rms(x: np.ndarray, params: dict) -> Outputs:
    return {"rms": float(_rms(x))}


register(Kernel(
    name="rms",
    summary="Root mean square of the window: sqrt(mean(x²)), accumulated in float64.",
    params=schema({}),
    output={"rms": "the RMS value; NaN for an empty input"},
    run=run_rms,
    example={"params": {}, "input": [3.0, -4.0, 3.0, -4.0]},
    inputs=InputRules(nonfinite="A NaN makes the result NaN; an inf makes it inf."),
))


@njit(nogil=True, cache=True)
def _ewma(x, alpha, initial, has_initial, out):
    level = initial
    started = has_initial
    for i in range(x.size):
        value = np.float64(x[i])
        if not started:
            level = value
            started = True
        else:
            level = level + alpha * (value - level)
        out[i] = level
    return level


def run_ewma(x: np.ndarray, params: dict) -> Outputs:
    out = np.empty(x.size, dtype=x.dtype)
    state = params.get("state")
    last = _ewma(x, params["alpha"], 0.0 if state is None else float(state),
                 state is not None, out)
    return {"y": out, "state": float(last) if x.size or state is not None else None}


register(Kernel(
    name="ewma",
    summary="Exponentially weighted moving average: y[i] = y[i-1] + alpha·(x[i] - y[i-1]).",
    params=schema({
        "alpha": number(exclusive_minimum=0.0, maximum=1.0, default=0.1,
                        description="smoothing factor in (0, 1]"),
        "state": number(description="the last `state` of the previous chunk, to continue a "
                                    "stream; without it y[0] = x[0]"),
    }),
    output={"y": "the smoothed series, same length and dtype as the input",
            "state": "the last level, to pass as `state` with the next chunk"},
    run=run_ewma,
    example={"params": {"alpha": 0.5}, "input": [1.0, 2.0, 3.0, 4.0]},
    inputs=InputRules(nonfinite="A NaN sample makes every later output NaN (the level is "
                                "poisoned); clean the input or restart with `state`."),
))
