"""Events in a window: outliers by z-score, mean shifts by CUSUM, and peaks."""

from __future__ import annotations

import numpy as np
from numba import njit

from appliance.kernels.params import ParamError, integer, number, number_array, schema
from appliance.kernels.peakfind import find_peaks
from appliance.kernels.registry import register
from appliance.kernels.spec import InputRules, Kernel, Outputs

# Inputs longer than this get their mean and variance in one pass, about the mean of
# their first _CENTER_SAMPLES samples.
_CENTER_SAMPLES = 65_536


@njit(nogil=True, cache=True)
def _finite_moments(x, center):
    """(n, sum(d), sum(d²)) for d = x - center over the finite samples, in four interleaved
    partial sums (independent chains); a non-finite sample adds 0."""
    a1 = b1 = c1 = d1 = 0.0
    a2 = b2 = c2 = d2 = 0.0
    valid = 0
    n = x.size
    i = 0
    while i + 4 <= n:
        va = np.float64(x[i])
        vb = np.float64(x[i + 1])
        vc = np.float64(x[i + 2])
        vd = np.float64(x[i + 3])
        fa = np.isfinite(va)
        fb = np.isfinite(vb)
        fc = np.isfinite(vc)
        fd = np.isfinite(vd)
        valid += fa + fb + fc + fd
        da = va - center if fa else 0.0
        db = vb - center if fb else 0.0
        dc = vc - center if fc else 0.0
        dd = vd - center if fd else 0.0
        a1 += da
        b1 += db
        c1 += dc
        d1 += dd
        a2 += da * da
        b2 += db * db
        c2 += dc * dc
        d2 += dd * dd
        i += 4
    for j in range(i, n):
        va = np.float64(x[j])
        if np.isfinite(va):
            valid += 1
            da = va - center
            a1 += da
            a2 += da * da
    return valid, (a1 + b1) + (c1 + d1), (a2 + b2) + (c2 + d2)


@njit(nogil=True, cache=True)
def _zscore_flags(x, threshold, flags):
    """Set flags[i] = 1 where |x[i] - mean| / std > threshold; return (count, mean, std).

    Non-finite samples are skipped everywhere. The squared deviations are summed about a
    point near the mean, so a large offset does not cancel the variance away: up to
    _CENTER_SAMPLES samples, in two passes, the mean first, then the squared deviations from
    it; beyond, in one pass about the mean c of the first _CENTER_SAMPLES samples, with the
    correction m2 = sum((x - c)²) - sum(x - c)²/n (Chan, Golub and LeVeque's corrected
    two-pass formula; c is far from the mean only if the variance is large with it, which
    bounds the cancellation by n / _CENTER_SAMPLES). Sums start relative to the first finite
    sample, which makes a constant window's mean exact and its std exactly 0 (no rounding
    noise to flag). The flagging pass divides only the samples within a few ulps of the
    threshold; the others are decided by comparing |x - mean| with threshold·std, widened by
    4 eps either way.
    """
    shift = np.nan
    for i in range(x.size):
        if np.isfinite(x[i]):
            shift = np.float64(x[i])
            break
    if np.isnan(shift):
        return 0, np.nan, np.nan
    if x.size <= _CENTER_SAMPLES:
        valid, total, _ = _finite_moments(x, shift)
        mean = shift + total / valid
        squares = _finite_moments(x, mean)[2]
    else:
        head, total, _ = _finite_moments(x[:_CENTER_SAMPLES], shift)
        center = shift + total / head if head else shift
        valid, total, squares = _finite_moments(x, center)
        mean = center + total / valid
        squares -= total * (total / valid)
    std = np.sqrt(max(squares, 0.0) / valid)
    count = 0
    if not std > 0.0:
        return count, mean, std
    limit = threshold * std
    eps4 = 4.0 * np.finfo(np.float64).eps
    low = limit * (1.0 - eps4)  # below: surely not flagged; above `high`: surely flagged
    high = limit * (1.0 + eps4)
    if not (low > 1e-290 and high < 1e290):  # under- or overflow: divide every sample
        low = 0.0
        high = np.inf
    for i in range(x.size):
        value = np.float64(x[i])
        distance = abs(value - mean)
        if distance <= low or not np.isfinite(value):
            continue
        if distance > high or distance / std > threshold:
            flags[i] = 1
            count += 1
    return count, mean, std


def run_zscore_flags(x: np.ndarray, params: dict) -> Outputs:
    flags = np.zeros(x.size, dtype=np.uint8)
    count, mean, std = _zscore_flags(x, params["threshold"], flags)
    return {"flags": flags, "count": int(count), "mean": float(mean), "std": float(std)}


register(
    Kernel(
        name="zscore_flags",
        summary="Flag samples more than `threshold` population standard deviations from "
        "the window's mean.",
        params=schema(
            {
                "threshold": number(
                    exclusive_minimum=0.0,
                    default=3.0,
                    description="flag when |x - mean| / std is strictly greater than this",
                ),
            }
        ),
        output={
            "flags": "uint8 per sample: 1 = flagged, 0 = not (always 0 when std is 0)",
            "count": "number of flagged samples",
            "mean": "mean of the finite samples (NaN if there are none)",
            "std": "population standard deviation (ddof=0) of the finite samples",
        },
        run=run_zscore_flags,
        example={"params": {"threshold": 2.0}, "input": [1.0, 1.2, 0.9, 1.1, 9.0, 1.0]},
        inputs=InputRules(
            nonfinite="NaN and ±inf samples count as missing: they are left out of the mean "
            "and std and are never flagged.",
        ),
    )
)


@njit(nogil=True, cache=True)
def _cusum(x, target, slack, limit, state):
    """Page's two-sided CUSUM over `x`, continuing from and updating `state` [s+, s-].

    s+ = max(0, s+ + x - target - k) and s- = max(0, s- + target - x - k), evaluated left
    to right exactly as written; a side that exceeds h raises an alarm (+1 up, -1 down) and
    restarts from 0.
    """
    high = state[0]
    low = state[1]
    alarms = np.empty(16, dtype=np.int64)
    direction = np.empty(16, dtype=np.int8)
    count = 0
    for i in range(x.size):
        value = np.float64(x[i])
        high = max(0.0, high + value - target - slack)
        low = max(0.0, low + target - value - slack)
        up = high > limit
        down = low > limit
        if not (up or down):
            continue
        if count + 2 > alarms.size:  # grow by doubling: alarms are usually rare
            alarms = np.concatenate((alarms, np.empty(alarms.size, dtype=np.int64)))
            direction = np.concatenate((direction, np.empty(direction.size, dtype=np.int8)))
        if up:
            alarms[count] = i
            direction[count] = 1
            count += 1
            high = 0.0
        if down:
            alarms[count] = i
            direction[count] = -1
            count += 1
            low = 0.0
    state[0] = high
    state[1] = low
    return alarms[:count].copy(), direction[:count].copy()


def check_cusum(params: dict) -> None:
    if any(value < 0 for value in params.get("state", ())):
        raise ParamError([{"field": "params.state", "message": "sums must be >= 0"}])


def run_cusum(x: np.ndarray, params: dict) -> Outputs:
    state = np.array(params.get("state", [0.0, 0.0]), dtype=np.float64)
    alarms, direction = _cusum(x, params["target"], params["k"], params["h"], state)
    return {"alarms": alarms, "direction": direction, "state": state.tolist()}


register(
    Kernel(
        name="cusum",
        summary="Two-sided CUSUM (Page) change detection on the mean, resumable across chunks.",
        params=schema(
            {
                "target": number(default=0.0, description="the in-control mean"),
                "k": number(
                    minimum=0.0,
                    default=0.5,
                    description="slack per sample, in input units (often half the shift to detect)",
                ),
                "h": number(
                    exclusive_minimum=0.0,
                    default=5.0,
                    description="alarm when a cumulative sum exceeds this, in input units",
                ),
                "state": number_array(
                    2,
                    2,
                    description="[s_pos, s_neg] from the previous chunk's `state` "
                    "(both >= 0); without it both sums start at 0",
                ),
            }
        ),
        output={
            "alarms": "int64 indices (within this chunk) of the samples that raised an alarm",
            "direction": "int8 per alarm: +1 the mean went up, -1 it went down",
            "state": "[s_pos, s_neg] after the last sample, to pass with the next chunk",
        },
        run=run_cusum,
        check=check_cusum,
        example={
            "params": {"target": 0.0, "k": 0.5, "h": 2.0},
            "input": [0.1, -0.2, 0.0, 2.0, 2.5, 1.8, 0.1, -3.0, -2.5],
        },
        inputs=InputRules(
            allow_nonfinite=False,
            nonfinite="Refused: a NaN would poison the sums for the rest of the stream.",
        ),
    )
)


def run_peaks(x: np.ndarray, params: dict) -> Outputs:
    height = params.get("min_height")
    indices, prominence = find_peaks(
        x,
        params["min_distance"],
        params["min_prominence"],
        0.0 if height is None else height,
        height is not None,
    )
    return {"indices": indices, "prominences": prominence.astype(x.dtype)}


register(
    Kernel(
        name="peaks",
        summary="Local maxima filtered by height, distance and prominence, like "
        "scipy.signal.find_peaks.",
        params=schema(
            {
                "min_distance": integer(
                    minimum=1,
                    default=1,
                    description="minimum spacing in samples; closer peaks lose to the "
                    "higher one (scipy's `distance`)",
                ),
                "min_prominence": number(
                    minimum=0.0,
                    default=0.0,
                    description="minimum prominence (scipy's `prominence`)",
                ),
                "min_height": number(
                    description="minimum peak value (scipy's `height`); no limit if absent"
                ),
            }
        ),
        output={
            "indices": "int64 sample indices of the peaks, ascending; a flat top is "
            "reported once, at its middle sample ((first + last) // 2)",
            "prominences": "prominence of each peak, in the input dtype (computed in float64)",
        },
        run=run_peaks,
        example={
            "params": {"min_distance": 2, "min_prominence": 0.5},
            "input": [0.0, 2.0, 0.5, 1.0, 0.8, 3.0, 3.0, 3.0, 0.0, 0.4, 0.0],
        },
        inputs=InputRules(
            allow_nonfinite=False,
            nonfinite="Refused: NaN has no order, so peaks and prominences are undefined.",
        ),
    )
)
