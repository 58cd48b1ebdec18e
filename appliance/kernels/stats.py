"""Statistics over a window of samples: streaming (rms, ewma), moving-window (sma,
rolling_std) and whole-window shape (peak_to_peak, crest_factor, kurtosis)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from appliance.kernels.moving import moving_mean, moving_std
from appliance.kernels.params import ParamError, boolean, integer, number, schema
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


register(
    Kernel(
        name="rms",
        summary="Root mean square of the window: sqrt(mean(x²)), accumulated in float64.",
        params=schema({}),
        output={"rms": "the RMS value; NaN for an empty input"},
        run=run_rms,
        example={"params": {}, "input": [3.0, -4.0, 3.0, -4.0]},
        inputs=InputRules(nonfinite="A NaN makes the result NaN; an inf makes it inf."),
    )
)


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
    last = _ewma(x, params["alpha"], 0.0 if state is None else float(state), state is not None, out)
    return {"y": out, "state": float(last) if x.size or state is not None else None}


register(
    Kernel(
        name="ewma",
        summary="Exponentially weighted moving average: y[i] = y[i-1] + alpha·(x[i] - y[i-1]).",
        params=schema(
            {
                "alpha": number(
                    exclusive_minimum=0.0,
                    maximum=1.0,
                    default=0.1,
                    description="smoothing factor in (0, 1]",
                ),
                "state": number(
                    description="the last `state` of the previous chunk, to continue a "
                    "stream; without it y[0] = x[0]"
                ),
            }
        ),
        output={
            "y": "the smoothed series, same length and dtype as the input",
            "state": "the last level, to pass as `state` with the next chunk",
        },
        run=run_ewma,
        example={"params": {"alpha": 0.5}, "input": [1.0, 2.0, 3.0, 4.0]},
        inputs=InputRules(
            nonfinite="A NaN sample makes every later output NaN (the level is "
            "poisoned); clean the input or restart with `state`."
        ),
    )
)


# Moving windows: the loops live in appliance/kernels/moving.py.


def run_sma(x: np.ndarray, params: dict) -> Outputs:
    window = params["window"]
    out = np.empty(max(x.size - window + 1, 0), dtype=x.dtype)
    moving_mean(x, window, out)
    return {"y": out}


register(
    Kernel(
        name="sma",
        summary="Simple moving average: y[j] = mean(x[j:j+window]), valid windows only.",
        params=schema(
            {
                "window": integer(
                    1, 10_000_000, default=8, description="number of samples averaged per output"
                ),
            }
        ),
        output={"y": "one mean per full window: max(n - window + 1, 0) values, input dtype"},
        run=run_sma,
        example={"params": {"window": 3}, "input": [1.0, 2.0, 3.0, 4.0, 5.0]},
        inputs=InputRules(
            nonfinite="A window holding a NaN, or both +inf and -inf, gives NaN; one "
            "holding only +inf (or -inf) gives +inf (-inf). Windows after the sample has "
            "left are unaffected."
        ),
    )
)


def check_rolling_std(params: dict) -> None:
    if params["ddof"] >= params["window"]:
        raise ParamError([{"field": "params.ddof", "message": "must be less than window"}])


def run_rolling_std(x: np.ndarray, params: dict) -> Outputs:
    window, ddof = params["window"], params["ddof"]
    out = np.empty(max(x.size - window + 1, 0), dtype=x.dtype)
    moving_std(x, window, ddof, out)
    return {"y": out}


register(
    Kernel(
        name="rolling_std",
        summary="Rolling standard deviation: y[j] = std(x[j:j+window], ddof), valid windows "
        "only, by a Welford add/remove update.",
        params=schema(
            {
                "window": integer(
                    1, 10_000_000, default=8, description="number of samples per output"
                ),
                "ddof": integer(
                    0,
                    1,
                    default=0,
                    description="delta degrees of freedom: 0 for the population std, "
                    "1 for the sample std; must be less than window",
                ),
            }
        ),
        output={
            "y": "one standard deviation per full window: max(n - window + 1, 0) values, "
            "input dtype"
        },
        run=run_rolling_std,
        check=check_rolling_std,
        example={"params": {"window": 3, "ddof": 1}, "input": [1.0, 2.0, 4.0, 8.0, 16.0]},
        inputs=InputRules(
            nonfinite="A window holding a NaN or inf gives NaN (as np.std); windows after "
            "the sample has left are unaffected."
        ),
    )
)


# Whole-window shape statistics. Scaling by a power of two is exact, so dividing the
# samples by one near the peak changes no digit but keeps x² and x⁴ from overflowing
# (x ~ 1e80) or underflowing (x ~ 1e-200) in float64.


@njit(nogil=True, cache=True)
def _pow2_scale(peak):
    """A power of two s with peak·s in [0.5, 1), clipped so that s itself is finite."""
    exponent = math.frexp(peak)[1]
    return math.ldexp(1.0, -max(min(exponent, 1000), -1000))


@njit(nogil=True, cache=True)
def _peak_to_peak(x):
    if x.size == 0:
        return np.nan
    low = np.inf
    high = -np.inf
    for i in range(x.size):
        value = np.float64(x[i])
        if np.isnan(value):
            return np.nan
        low = min(low, value)
        high = max(high, value)
    return high - low


def run_peak_to_peak(x: np.ndarray, params: dict) -> Outputs:
    return {"peak_to_peak": float(_peak_to_peak(x))}


register(
    Kernel(
        name="peak_to_peak",
        summary="Peak-to-peak range of the window: max(x) - min(x), in float64.",
        params=schema({}),
        output={"peak_to_peak": "max - min; NaN for an empty input"},
        run=run_peak_to_peak,
        example={"params": {}, "input": [1.0, -2.5, 4.0, 0.5]},
        inputs=InputRules(
            nonfinite="As np.ptp: a NaN gives NaN; an inf gives inf, or NaN when "
            "max and min are the same infinity."
        ),
    )
)


@njit(nogil=True, cache=True)
def _crest_factor(x):
    peak = 0.0
    for i in range(x.size):
        magnitude = abs(np.float64(x[i]))
        if not np.isfinite(magnitude):
            return np.nan
        peak = max(peak, magnitude)
    if peak == 0.0:
        return np.nan
    scale = _pow2_scale(peak)
    total = 0.0
    for i in range(x.size):
        value = np.float64(x[i]) * scale
        total += value * value
    return peak * scale / np.sqrt(total / x.size)


def run_crest_factor(x: np.ndarray, params: dict) -> Outputs:
    return {"crest_factor": float(_crest_factor(x))}


register(
    Kernel(
        name="crest_factor",
        summary="Crest factor of the window: max|x| / rms(x), between 1 and sqrt(n).",
        params=schema({}),
        output={"crest_factor": "peak over RMS; NaN for an empty or all-zero input"},
        run=run_crest_factor,
        example={"params": {}, "input": [0.0, 1.0, 0.0, -1.0]},
        inputs=InputRules(nonfinite="A NaN or inf gives NaN (the ratio is undefined)."),
    )
)


@njit(nogil=True, cache=True)
def _kurtosis(x, fisher):
    n = x.size
    if n < 2:
        return np.nan
    peak = 0.0
    for i in range(n):
        magnitude = abs(np.float64(x[i]))
        if not np.isfinite(magnitude):
            return np.nan
        peak = max(peak, magnitude)
    scale = _pow2_scale(peak) if peak > 0.0 else 1.0
    total = 0.0
    for i in range(n):
        total += np.float64(x[i]) * scale
    mean = total / n
    m2 = 0.0
    m4 = 0.0
    for i in range(n):
        deviation = np.float64(x[i]) * scale - mean
        square = deviation * deviation
        m2 += square
        m4 += square * square
    m2 /= n
    m4 /= n
    # scipy's test for a constant input: a variance at the rounding level of the mean.
    if m2 <= (np.finfo(np.float64).eps * mean) ** 2:
        return np.nan
    pearson = m4 / (m2 * m2)
    return pearson - 3.0 if fisher else pearson


def run_kurtosis(x: np.ndarray, params: dict) -> Outputs:
    return {"kurtosis": float(_kurtosis(x, params["fisher"]))}


register(
    Kernel(
        name="kurtosis",
        summary="Kurtosis of the window from population moments, m4 / m2², minus 3 when "
        "`fisher` (as scipy.stats.kurtosis with bias=True).",
        params=schema(
            {
                "fisher": boolean(
                    default=True,
                    description="true for excess kurtosis (normal = 0), false for "
                    "Pearson's (normal = 3)",
                ),
            }
        ),
        output={"kurtosis": "the kurtosis; NaN for fewer than 2 samples or zero variance"},
        run=run_kurtosis,
        example={"params": {"fisher": True}, "input": [1.0, 2.0, 3.0, 4.0, 10.0]},
        inputs=InputRules(nonfinite="A NaN or inf gives NaN (as scipy.stats.kurtosis)."),
    )
)
