"""Linear filters that stream: each call returns the filter `state` to pass with the next
chunk, so filtering a signal in chunks gives what filtering it at once gives: exactly for
the FIR filter; for the biquad exactly below 4,096 samples a call and when chunks are cut
at multiples of 4,096, and otherwise to rounding (~1e-12 relative), because its long-input
path works in blocks (see `_biquad`) that fall elsewhere when the cut moves.

The state must round-trip through JSON parameters, which are finite numbers only, and an
IIR filter never forgets a NaN; so these kernels refuse non-finite input.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from appliance.kernels.lanes import eight_blocks, eight_rows
from appliance.kernels.params import ParamError, choice, number, number_array, schema
from appliance.kernels.registry import register
from appliance.kernels.spec import InputRules, Kernel, Outputs

_FINITE_ONLY = InputRules(
    allow_nonfinite=False,
    nonfinite="Refused (input error nonfinite_input): a NaN or inf would poison the filter "
    "state, which must be finite to be passed back as a parameter.",
)


def design_biquad(
    kind: str, cutoff_hz: float, sample_rate_hz: float, q: float
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(b, a) of an RBJ Audio EQ Cookbook biquad, normalised so that a[0] == 1.

    `kind` is lowpass, highpass or bandpass (the cookbook's constant 0 dB peak gain
    band-pass, centred on `cutoff_hz`). Needs 0 < cutoff_hz < sample_rate_hz / 2, which
    `check_biquad` enforces for the kernel."""
    w0 = 2 * math.pi * cutoff_hz / sample_rate_hz
    cos_w0 = math.cos(w0)
    alpha = math.sin(w0) / (2 * q)
    # 1 - cos(w0) written as 2·sin²(w0/2): no cancellation for cutoffs far below Nyquist.
    one_minus_cos = 2 * math.sin(w0 / 2) ** 2
    if kind == "lowpass":
        b = (one_minus_cos / 2, one_minus_cos, one_minus_cos / 2)
    elif kind == "highpass":
        one_plus_cos = 2 - one_minus_cos
        b = (one_plus_cos / 2, -one_plus_cos, one_plus_cos / 2)
    elif kind == "bandpass":
        b = (alpha, 0.0, -alpha)
    else:
        raise ParamError([{"field": "params.kind", "message": f"unknown filter kind {kind!r}"}])
    a0 = 1 + alpha
    return (b[0] / a0, b[1] / a0, b[2] / a0), (1.0, -2 * cos_w0 / a0, (1 - alpha) / a0)


# Long inputs run as groups of 8 blocks of _BLOCK samples (see _biquad); a group holds
# 4096 samples, 32 KiB of float64 per buffer, so a group's scratch stays in L1/L2 cache.
_BLOCK = 512
# The scratch rows of the 8 blocks are this far apart: rows exactly 4 KiB apart would all
# map to the same L1 cache set and evict each other.
_ROW = _BLOCK + 8
_TINY = 1e-250  # decaying responses below this are flushed to 0: denormals are very slow


@njit(nogil=True, cache=True)
def _biquad_serial(x, start, stop, b0, b1, b2, a1, a2, z1, z2, out):
    """Transposed direct form II, as scipy.signal.lfilter, over x[start:stop]."""
    for i in range(start, stop):
        value = np.float64(x[i])
        y = b0 * value + z1
        z1 = b1 * value - a1 * y + z2
        z2 = b2 * value - a2 * y
        out[i] = y
    return z1, z2


@njit(nogil=True, cache=True)
def _biquad_state_responses(a1, a2):
    """Outputs and end state of _BLOCK steps with zero input from the unit states (1, 0)
    and (0, 1): the block's response to whatever state it starts in, by linearity."""
    responses = np.zeros((2, _BLOCK))
    ends = np.zeros((2, 2))  # ends[u] = (z1, z2) after the block, from unit state u
    for unit in range(2):
        z1, z2 = (1.0, 0.0) if unit == 0 else (0.0, 1.0)
        for j in range(_BLOCK):
            y = z1
            z1 = z2 - a1 * y
            z2 = -a2 * y
            if abs(z1) < _TINY:
                z1 = 0.0
            if abs(z2) < _TINY:
                z2 = 0.0
            responses[unit, j] = y
        ends[unit, 0] = z1
        ends[unit, 1] = z2
    return responses, ends


@njit(nogil=True, cache=True)
def _biquad_zero_state(x, start, b0, b1, b2, a1, a2, zero, ends):
    """Zero-state outputs of the 8 blocks of _BLOCK samples from x[start] into the rows of
    `zero`, side by side: eight independent chains whose states live in registers (an array
    of lanes would put a store and a load into every chain); their end states go to
    ends[lane] = (z1, z2)."""
    n = _BLOCK
    x0, x1, x2, x3, x4, x5, x6, x7 = eight_blocks(x, start, n)
    y0, y1, y2, y3, y4, y5, y6, y7 = eight_rows(zero, n, _ROW)
    p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = 0.0  # z1 of each lane
    q0 = q1 = q2 = q3 = q4 = q5 = q6 = q7 = 0.0  # z2 of each lane
    for j in range(n):
        v = np.float64(x0[j])
        y = b0 * v + p0
        p0 = b1 * v - a1 * y + q0
        q0 = b2 * v - a2 * y
        y0[j] = y
        v = np.float64(x1[j])
        y = b0 * v + p1
        p1 = b1 * v - a1 * y + q1
        q1 = b2 * v - a2 * y
        y1[j] = y
        v = np.float64(x2[j])
        y = b0 * v + p2
        p2 = b1 * v - a1 * y + q2
        q2 = b2 * v - a2 * y
        y2[j] = y
        v = np.float64(x3[j])
        y = b0 * v + p3
        p3 = b1 * v - a1 * y + q3
        q3 = b2 * v - a2 * y
        y3[j] = y
        v = np.float64(x4[j])
        y = b0 * v + p4
        p4 = b1 * v - a1 * y + q4
        q4 = b2 * v - a2 * y
        y4[j] = y
        v = np.float64(x5[j])
        y = b0 * v + p5
        p5 = b1 * v - a1 * y + q5
        q5 = b2 * v - a2 * y
        y5[j] = y
        v = np.float64(x6[j])
        y = b0 * v + p6
        p6 = b1 * v - a1 * y + q6
        q6 = b2 * v - a2 * y
        y6[j] = y
        v = np.float64(x7[j])
        y = b0 * v + p7
        p7 = b1 * v - a1 * y + q7
        q7 = b2 * v - a2 * y
        y7[j] = y
    ends[0, 0], ends[0, 1] = p0, q0
    ends[1, 0], ends[1, 1] = p1, q1
    ends[2, 0], ends[2, 1] = p2, q2
    ends[3, 0], ends[3, 1] = p3, q3
    ends[4, 0], ends[4, 1] = p4, q4
    ends[5, 0], ends[5, 1] = p5, q5
    ends[6, 0], ends[6, 1] = p6, q6
    ends[7, 0], ends[7, 1] = p7, q7


@njit(nogil=True, cache=True)
def _biquad(x, b0, b1, b2, a1, a2, z1, z2, out):
    """Transposed direct form II, as scipy.signal.lfilter; returns the final (z1, z2).

    One step feeds the next, so a plain loop waits on the FMA latency every sample. By
    linearity the output of a block is its zero-state response plus z1·h1 + z2·h2, where
    h1, h2 are the (input-free) responses to the unit states (1, 0) and (0, 1), and its end
    state likewise. So 8 blocks of _BLOCK samples first run from zero state side by side
    (independent chains, in lock-step: _biquad_zero_state); then, block by block, the true
    incoming state is added and carried to the next block (a 2×2 update). Inputs shorter
    than a group, and the tail after the last full group, run the plain loop. Chunking a
    stream therefore gives bit-for-bit the same output when every chunk but the last is a
    multiple of 4096 samples (or the stream is shorter than that); otherwise the two differ
    by rounding only.
    """
    group = 8 * _BLOCK
    full = x.size - x.size % group
    if full:
        responses, unit_ends = _biquad_state_responses(a1, a2)
        zero = np.empty(8 * _ROW)
        lane_ends = np.empty((8, 2))
        for start in range(0, full, group):
            _biquad_zero_state(x, start, b0, b1, b2, a1, a2, zero, lane_ends)
            for lane in range(8):
                block = out[start + lane * _BLOCK : start + (lane + 1) * _BLOCK]
                forced = zero[lane * _ROW : lane * _ROW + _BLOCK]
                for j in range(_BLOCK):
                    block[j] = forced[j] + z1 * responses[0, j] + z2 * responses[1, j]
                z1, z2 = (
                    lane_ends[lane, 0] + z1 * unit_ends[0, 0] + z2 * unit_ends[1, 0],
                    lane_ends[lane, 1] + z1 * unit_ends[0, 1] + z2 * unit_ends[1, 1],
                )
    return _biquad_serial(x, full, x.size, b0, b1, b2, a1, a2, z1, z2, out)


def check_biquad(params: dict) -> None:
    nyquist = params["sample_rate_hz"] / 2
    if not 0 < params["cutoff_hz"] < nyquist:
        raise ParamError(
            [
                {
                    "field": "params.cutoff_hz",
                    "message": f"must be > 0 and < the Nyquist frequency {nyquist:g} Hz "
                    "(sample_rate_hz / 2)",
                }
            ]
        )


def run_biquad(x: np.ndarray, params: dict) -> Outputs:
    (b0, b1, b2), (_, a1, a2) = design_biquad(
        params["kind"], params["cutoff_hz"], params["sample_rate_hz"], params["q"]
    )
    z1, z2 = params.get("state") or (0.0, 0.0)
    out = np.empty(x.size, dtype=x.dtype)
    z1, z2 = _biquad(x, b0, b1, b2, a1, a2, float(z1), float(z2), out)
    return {"y": out, "state": [float(z1), float(z2)]}


register(
    Kernel(
        name="biquad",
        summary="Second-order IIR filter (RBJ cookbook low-, high- or band-pass), in "
        "transposed direct form II, streaming across chunks.",
        params=schema(
            {
                "kind": choice(
                    "lowpass",
                    "highpass",
                    "bandpass",
                    default="lowpass",
                    description="filter response; bandpass has 0 dB gain at cutoff_hz",
                ),
                "cutoff_hz": number(
                    exclusive_minimum=0.0,
                    description="corner (centre, for bandpass) frequency in Hz; "
                    "must be below sample_rate_hz / 2",
                ),
                "sample_rate_hz": number(
                    exclusive_minimum=0.0, description="sampling rate of the input in Hz"
                ),
                "q": number(
                    exclusive_minimum=0.0,
                    maximum=1000.0,
                    default=0.7071,
                    description="quality factor; 0.7071 is a Butterworth response",
                ),
                "state": number_array(
                    2,
                    2,
                    description="[z1, z2] from the previous chunk's `state`, "
                    "to continue a stream; default [0, 0]",
                ),
            },
            required=("cutoff_hz", "sample_rate_hz"),
        ),
        output={
            "y": "the filtered series, same length and dtype as the input",
            "state": "[z1, z2] after the last sample, to pass as `state` with the next chunk",
        },
        run=run_biquad,
        check=check_biquad,
        example={
            "params": {"kind": "lowpass", "cutoff_hz": 100.0, "sample_rate_hz": 1000.0},
            "input": [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        },
        inputs=_FINITE_ONLY,
    )
)


_FIR_BLOCK = 256  # outputs accumulated together: the block stays in L1 for every tap


@njit(nogil=True, cache=True)
def _fir(x, taps, history, out):
    """out[i] = Σ taps[k]·x[i-k], where x[-j] is history[-j] (the previous chunk's tail).

    Every output sums its products in the same order (k = 0, 1, ...) whichever loop
    computes it, so a stream filtered in chunks matches it filtered at once to the bit."""
    order = history.size  # == taps.size - 1
    head = min(order, x.size)
    for i in range(head):  # outputs that reach back into the history
        total = 0.0
        for k in range(taps.size):
            j = i - k
            total += taps[k] * (np.float64(x[j]) if j >= 0 else history[order + j])
        out[i] = total
    # Taps outermost over a block of outputs, so the inner loop vectorises without reordering
    # any output's sum; four taps per pass over the block cut its loads and stores by 4.
    grouped = taps.size - taps.size % 4
    totals = np.empty(_FIR_BLOCK)
    for start in range(head, x.size, _FIR_BLOCK):
        size = min(_FIR_BLOCK, x.size - start)
        acc = totals[:size]
        acc[:] = 0.0
        for k in range(0, grouped, 4):
            t0, t1, t2, t3 = taps[k], taps[k + 1], taps[k + 2], taps[k + 3]
            window = x[start - k - 3 : start - k + size]  # window[i + 3 - m] is x[i-k-m]
            for i in range(size):
                total = acc[i] + t0 * np.float64(window[i + 3])
                total += t1 * np.float64(window[i + 2])
                total += t2 * np.float64(window[i + 1])
                acc[i] = total + t3 * np.float64(window[i])
        for k in range(grouped, taps.size):
            tap = taps[k]
            delayed = x[start - k : start - k + size]  # a view: plain indices, no wraparound
            for i in range(size):
                acc[i] += tap * np.float64(delayed[i])
        for i in range(size):
            out[start + i] = acc[i]


def check_fir(params: dict) -> None:
    order = len(params["taps"]) - 1
    state = params.get("state")
    if state is not None and len(state) != order:
        raise ParamError(
            [
                {
                    "field": "params.state",
                    "message": f"expected {order} items (len(taps) - 1), got {len(state)}",
                }
            ]
        )


def run_fir(x: np.ndarray, params: dict) -> Outputs:
    taps = np.asarray(params["taps"], dtype=np.float64)
    order = taps.size - 1
    state = params.get("state")
    history = np.zeros(order) if state is None else np.asarray(state, dtype=np.float64)
    out = np.empty(x.size, dtype=x.dtype)
    _fir(x, taps, history, out)
    tail = x[x.size - order :] if x.size >= order else np.concatenate([history[x.size :], x])
    return {"y": out, "state": [float(value) for value in tail]}


register(
    Kernel(
        name="fir",
        summary="FIR filter: y[i] = Σ taps[k]·x[i-k], streaming across chunks.",
        params=schema(
            {
                "taps": number_array(
                    1, 1024, description="filter coefficients, taps[0] applied to the newest sample"
                ),
                "state": number_array(
                    0,
                    1023,
                    description="the previous chunk's `state`: its last len(taps) - 1 "
                    "input samples, oldest first; default zeros",
                ),
            },
            required=("taps",),
        ),
        output={
            "y": "the filtered series, same length and dtype as the input",
            "state": "the last len(taps) - 1 input samples, oldest first, to pass as `state` "
            "with the next chunk",
        },
        run=run_fir,
        check=check_fir,
        example={"params": {"taps": [0.25, 0.5, 0.25]}, "input": [0.0, 4.0, 0.0, 4.0, 0.0]},
        inputs=_FINITE_ONLY,
    )
)
