"""Statistics over a window of samples: streaming (rms, ewma), moving-window (sma,
rolling_std) and whole-window shape (peak_to_peak, crest_factor, kurtosis)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from appliance.kernels.lanes import eight_blocks, eight_rows
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


# Long inputs run as groups of 8 blocks of _EWMA_BLOCK samples (see _ewma_blocks).
_EWMA_BLOCK = 512
# The scratch rows of the 8 blocks are this far apart: rows exactly 4 KiB apart would all
# map to the same L1 cache set and evict each other.
_EWMA_ROW = _EWMA_BLOCK + 8
_EWMA_TINY = 1e-250  # powers of (1 - alpha) below this are flushed to 0: denormals are slow


@njit(nogil=True, cache=True)
def _ewma_serial(x, start, alpha, level, out):
    for i in range(start, x.size):
        level = level + alpha * (np.float64(x[i]) - level)
        out[i] = level
    return level


@njit(nogil=True, cache=True)
def _ewma_zero_state(x, start, alpha, zero):
    """Zero-state EWMA of the 8 blocks of _EWMA_BLOCK samples from x[start] into the rows
    of `zero`, side by side: eight independent chains, each in a register of its own (an
    array of lanes would put a store and a load into every chain). Returns whether all
    eight ended finite."""
    decay = 1.0 - alpha
    n = _EWMA_BLOCK
    x0, x1, x2, x3, x4, x5, x6, x7 = eight_blocks(x, start, n)
    z0, z1, z2, z3, z4, z5, z6, z7 = eight_rows(zero, n, _EWMA_ROW)
    l0 = l1 = l2 = l3 = l4 = l5 = l6 = l7 = 0.0
    for j in range(n):
        l0 = decay * l0 + alpha * np.float64(x0[j])
        z0[j] = l0
        l1 = decay * l1 + alpha * np.float64(x1[j])
        z1[j] = l1
        l2 = decay * l2 + alpha * np.float64(x2[j])
        z2[j] = l2
        l3 = decay * l3 + alpha * np.float64(x3[j])
        z3[j] = l3
        l4 = decay * l4 + alpha * np.float64(x4[j])
        z4[j] = l4
        l5 = decay * l5 + alpha * np.float64(x5[j])
        z5[j] = l5
        l6 = decay * l6 + alpha * np.float64(x6[j])
        z6[j] = l6
        l7 = decay * l7 + alpha * np.float64(x7[j])
        z7[j] = l7
    return np.isfinite(((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)))


@njit(nogil=True, cache=True)
def _ewma_blocks(x, start, alpha, level, out):
    """The recurrence over whole groups of blocks from x[start]; returns (level, where the
    groups ended). y = (1-α)·y + α·x is linear, so a block's output is its zero-state output
    plus (1-α)^(j+1)·level: 8 blocks first run from zero side by side (_ewma_zero_state),
    then each adds the true incoming level and passes on its last.
    A NaN or inf stops the groups: the plain loop then gives it its usual path."""
    group = 8 * _EWMA_BLOCK
    decay = 1.0 - alpha
    powers = np.empty(_EWMA_BLOCK)  # (1-α)^(j+1)
    power = 1.0
    for j in range(_EWMA_BLOCK):
        power = power * decay if power >= _EWMA_TINY else 0.0
        powers[j] = power
    zero = np.empty(8 * _EWMA_ROW)
    while start + group <= x.size and np.isfinite(level):
        if not _ewma_zero_state(x, start, alpha, zero):
            break  # a NaN or inf in these blocks: leave them to the plain loop
        for lane in range(8):
            block = out[start + lane * _EWMA_BLOCK : start + (lane + 1) * _EWMA_BLOCK]
            forced = zero[lane * _EWMA_ROW : lane * _EWMA_ROW + _EWMA_BLOCK]
            for j in range(_EWMA_BLOCK):
                block[j] = forced[j] + powers[j] * level
            level = forced[_EWMA_BLOCK - 1] + powers[_EWMA_BLOCK - 1] * level
        start += group
    return level, start


@njit(nogil=True, cache=True)
def _ewma(x, alpha, initial, has_initial, out):
    """level += α·(x - level) per sample (y[0] = x[0] without an initial level).

    Inputs of a group (4096 samples) or more are split into blocks computed several at a
    time (see _ewma_blocks); results differ from the plain loop by rounding only."""
    if x.size == 0:
        return initial
    level = initial
    start = 0
    if not has_initial:
        level = np.float64(x[0])
        out[0] = level
        start = 1
    if np.isfinite(level):
        level, start = _ewma_blocks(x, start, alpha, level, out)
    return _ewma_serial(x, start, alpha, level, out)


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
def _peak_and_sum(x):
    """(max |x|, sum(x)) in float64, each in four interleaved partials (independent chains).
    The sum is non-finite if any sample is (or if it overflows)."""
    p0 = p1 = p2 = p3 = 0.0
    s0 = s1 = s2 = s3 = 0.0
    n = x.size
    i = 0
    while i + 4 <= n:
        a = np.float64(x[i])
        b = np.float64(x[i + 1])
        c = np.float64(x[i + 2])
        d = np.float64(x[i + 3])
        p0 = max(p0, abs(a))
        p1 = max(p1, abs(b))
        p2 = max(p2, abs(c))
        p3 = max(p3, abs(d))
        s0 += a
        s1 += b
        s2 += c
        s3 += d
        i += 4
    for j in range(i, n):
        a = np.float64(x[j])
        p0 = max(p0, abs(a))
        s0 += a
    return max(max(p0, p1), max(p2, p3)), (s0 + s1) + (s2 + s3)


@njit(nogil=True, cache=True)
def _central_moments(x, scale, mean):
    """(sum(d²), sum(d⁴)) for d = x·scale - mean, in four interleaved partials."""
    a2 = b2 = c2 = d2 = 0.0
    a4 = b4 = c4 = d4 = 0.0
    n = x.size
    i = 0
    while i + 4 <= n:
        a = np.float64(x[i]) * scale - mean
        b = np.float64(x[i + 1]) * scale - mean
        c = np.float64(x[i + 2]) * scale - mean
        d = np.float64(x[i + 3]) * scale - mean
        a *= a
        b *= b
        c *= c
        d *= d
        a2 += a
        b2 += b
        c2 += c
        d2 += d
        a4 += a * a
        b4 += b * b
        c4 += c * c
        d4 += d * d
        i += 4
    for j in range(i, n):
        a = np.float64(x[j]) * scale - mean
        a *= a
        a2 += a
        a4 += a * a
    return (a2 + b2) + (c2 + d2), (a4 + b4) + (c4 + d4)


@njit(nogil=True, cache=True)
def _kurtosis(x, fisher):
    """Two passes: max |x| and the sum, then the central moments of the scaled samples.

    sum(x)·s equals sum(x·s) for a power of two s while nothing overflows, so the first pass
    needs no scale; a non-finite sum (a NaN or inf sample, or an overflow) takes a slower
    pass that scales each sample first."""
    n = x.size
    if n < 2:
        return np.nan
    peak, total = _peak_and_sum(x)
    scale = _pow2_scale(peak) if peak > 0.0 else 1.0
    if np.isfinite(total):
        total *= scale
    else:
        total = 0.0
        for i in range(n):
            value = np.float64(x[i])
            if not np.isfinite(value):
                return np.nan
            total += value * scale
    mean = total / n
    m2, m4 = _central_moments(x, scale, mean)
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
