"""The shape of a window: downsampling for display (LTTB), histogram and quantiles."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from appliance.kernels.params import ParamError, integer, number_array, schema
from appliance.kernels.registry import register
from appliance.kernels.spec import InputError, InputRules, Kernel, Outputs


@njit(nogil=True, cache=True)
def _lttb_next_means(y, every, threshold, means):
    """means[k-1] = the mean of y over bucket k's "next bucket" range, for k = 1 ..
    threshold - 2, each summed in index order exactly as the textbook does.

    A sum is a chain of dependent adds, so one bucket at a time waits on the add latency
    every sample; here four buckets' sums run side by side (independent chains, each in
    its own order)."""
    n = y.size
    count = threshold - 2
    k = 1
    while k + 3 <= count:
        s0 = math.floor(k * every) + 1
        s1 = math.floor((k + 1) * every) + 1
        s2 = math.floor((k + 2) * every) + 1
        s3 = math.floor((k + 3) * every) + 1
        e3 = min(math.floor((k + 4) * every) + 1, n)
        b0 = y[s0:s1]  # views: plain indices, no wraparound checks
        b1 = y[s1:s2]
        b2 = y[s2:s3]
        b3 = y[s3:e3]
        common = min(min(b0.size, b1.size), min(b2.size, b3.size))
        t0 = t1 = t2 = t3 = 0.0
        for j in range(common):
            t0 += np.float64(b0[j])
            t1 += np.float64(b1[j])
            t2 += np.float64(b2[j])
            t3 += np.float64(b3[j])
        for j in range(common, b0.size):
            t0 += np.float64(b0[j])
        for j in range(common, b1.size):
            t1 += np.float64(b1[j])
        for j in range(common, b2.size):
            t2 += np.float64(b2[j])
        for j in range(common, b3.size):
            t3 += np.float64(b3[j])
        means[k - 1] = t0 / b0.size
        means[k] = t1 / b1.size
        means[k + 1] = t2 / b2.size
        means[k + 2] = t3 / b3.size
        k += 4
    while k <= count:
        bucket = y[math.floor(k * every) + 1 : min(math.floor((k + 1) * every) + 1, n)]
        total = 0.0
        for j in range(bucket.size):
            total += np.float64(bucket[j])
        means[k - 1] = total / bucket.size
        k += 1


@njit(nogil=True, cache=True)
def _lttb(y, threshold):
    """Largest-Triangle-Three-Buckets (Steinarsson 2013) over the points (i, y[i]).

    Requires y.size > threshold ≥ 3. The first and last points are kept; the others are
    split into threshold - 2 buckets, and from each bucket the point that makes the largest
    triangle with the previously kept point and the mean of the next bucket is kept.
    Every float64 operation of the textbook is repeated in its order, so the same points
    are chosen; the next buckets' means, which do not depend on any choice, are summed
    first (_lttb_next_means), and the triangle areas are compared unhalved (halving by
    0.5 is exact, so it never changes which is largest).
    """
    n = y.size
    every = (n - 2) / (threshold - 2)
    keep = np.empty(threshold, dtype=np.int64)
    means = np.empty(threshold - 2)
    _lttb_next_means(y, every, threshold, means)
    keep[0] = 0
    a = 0
    for bucket in range(threshold - 2):
        next_start = math.floor((bucket + 1) * every) + 1
        next_end = min(math.floor((bucket + 2) * every) + 1, n)
        # The sum of the indices in closed form: an integer below 2^53, so the same double
        # as summing them one by one.
        mean_x = float((next_start + next_end - 1) * (next_end - next_start) // 2)
        mean_x /= next_end - next_start
        start = math.floor(bucket * every) + 1
        end = math.floor((bucket + 1) * every) + 1
        ax = float(a)
        ay = np.float64(y[a])
        across = ax - mean_x
        up = means[bucket] - ay
        best_area = -1.0
        best = start
        points = y[start:end]
        point_x = float(start)  # exact: indices stay below 2^53
        for j in range(points.size):
            area = abs(across * (np.float64(points[j]) - ay) - (ax - point_x) * up)
            point_x += 1.0
            if area > best_area:
                best_area = area
                best = start + j
        keep[bucket + 1] = best
        a = best
    keep[threshold - 1] = n - 1
    return keep


def run_lttb(x: np.ndarray, params: dict) -> Outputs:
    if x.size <= params["threshold"]:
        indices = np.arange(x.size, dtype=np.int64)
    else:
        indices = _lttb(x, params["threshold"])
    return {"indices": indices, "values": x[indices]}


register(
    Kernel(
        name="lttb",
        summary="Downsample (index, value) points for display with Largest-Triangle-Three-Buckets.",
        params=schema(
            {
                "threshold": integer(
                    3,
                    10_000_000,
                    default=1000,
                    description="number of points to keep (about a chart's pixel width); "
                    "a window of at most this many points is returned unchanged",
                ),
            }
        ),
        output={
            "indices": "int64 indices of the kept samples, ascending, always including the "
            "first and the last",
            "values": "the kept samples, in the input dtype",
        },
        run=run_lttb,
        example={
            "params": {"threshold": 4},
            "input": [0.0, 1.0, 0.0, 5.0, 0.0, 1.0, 0.0, -4.0, 0.0, 1.0],
        },
        inputs=InputRules(
            allow_nonfinite=False,
            nonfinite="Refused: triangle areas with NaN or inf cannot be compared.",
        ),
    )
)


@njit(nogil=True, cache=True)
def _ordered_range(x):
    """(min, max) of the samples, NaN skipped (it fails every comparison), in four
    interleaved partials with no branch."""
    l0 = l1 = l2 = l3 = np.inf
    h0 = h1 = h2 = h3 = -np.inf
    n = x.size
    i = 0
    while i + 4 <= n:
        a = np.float64(x[i])
        b = np.float64(x[i + 1])
        c = np.float64(x[i + 2])
        d = np.float64(x[i + 3])
        l0 = a if a < l0 else l0
        h0 = a if a > h0 else h0
        l1 = b if b < l1 else l1
        h1 = b if b > h1 else h1
        l2 = c if c < l2 else l2
        h2 = c if c > h2 else h2
        l3 = d if d < l3 else l3
        h3 = d if d > h3 else h3
        i += 4
    for j in range(i, n):
        a = np.float64(x[j])
        l0 = a if a < l0 else l0
        h0 = a if a > h0 else h0
    return min(min(l0, l1), min(l2, l3)), max(max(h0, h1), max(h2, h3))


@njit(nogil=True, cache=True)
def _finite_range(x):
    """(min, max, found) over the finite samples. Without infinities (the usual case) the
    plain min and max are those, from a loop with no branch; a min of -inf or a max of +inf
    sends the data through `_finite_range_skipping_inf`."""
    low, high = _ordered_range(x)
    if low == -np.inf or high == np.inf:
        return _finite_range_skipping_inf(x)
    return low, high, low <= high


@njit(nogil=True, cache=True)
def _finite_range_skipping_inf(x):
    """(min, max, found) over the finite samples, in four interleaved partials."""
    low0 = low1 = low2 = low3 = np.inf
    high0 = high1 = high2 = high3 = -np.inf
    n = x.size
    i = 0
    while i + 4 <= n:
        a = np.float64(x[i])
        b = np.float64(x[i + 1])
        c = np.float64(x[i + 2])
        d = np.float64(x[i + 3])
        # A NaN fails every comparison; the infinities are ruled out by name.
        if a < low0 and a != -np.inf:
            low0 = a
        if a > high0 and a != np.inf:
            high0 = a
        if b < low1 and b != -np.inf:
            low1 = b
        if b > high1 and b != np.inf:
            high1 = b
        if c < low2 and c != -np.inf:
            low2 = c
        if c > high2 and c != np.inf:
            high2 = c
        if d < low3 and d != -np.inf:
            low3 = d
        if d > high3 and d != np.inf:
            high3 = d
        i += 4
    for j in range(i, n):
        a = np.float64(x[j])
        if a < low0 and a != -np.inf:
            low0 = a
        if a > high0 and a != np.inf:
            high0 = a
    low = min(min(low0, low1), min(low2, low3))
    high = max(max(high0, high1), max(high2, high3))
    return low, high, low <= high


_HISTOGRAM_BLOCK = 512  # samples classified together, then counted


@njit(nogil=True, cache=True)
def _numpy_bin(v, edges, bins, span, scaled, factor):
    """numpy.histogram's bin for a value v in [edges[0], edges[-1]]."""
    first = edges[0]
    index = int((v - first) * factor) if scaled else int((v - first) / span * bins)
    if index == bins:
        index -= 1
    if v < edges[index]:
        index -= 1
    if v >= edges[index + 1] and index != bins - 1:
        index += 1
    return index


@njit(nogil=True, cache=True)
def _histogram(x, edges, counts):
    """Count x into the equal-width bins given by `edges` the way numpy.histogram does;
    return (nan_count, outside_count).

    numpy scales a value to a bin index, (v - first) / span · bins, then moves it by one
    when rounding put the value across a computed edge. When the edges are accurate to a
    small fraction of a bin (their rounding, a few eps·max|edge|, is under 2^-36·bins·the
    bin width), that makes the bin the one whose edges hold the value. Then the scaled
    index is (v - first) · (bins / span), a multiplication instead of a division, and a
    value inside the range and more than 2^-10 of a bin from a computed edge is in bin
    floor(index) with no need to look at the edges. Each block of samples is first
    classified that way by a loop with no branch (it vectorises): the bin's counter, or -1
    for "look closer". Then a second loop counts; the samples marked -1 (NaN, outside,
    near an edge, or every sample when the edges are not accurate enough) go through
    numpy's arithmetic as is (`_numpy_bin`). Counts go to four interleaved copies of the
    bins, summed at the end, so that runs of values in one bin are not serialised on one
    counter."""
    bins = counts.size
    first = edges[0]
    last = edges[bins]
    span = last - first
    scaled = max(abs(first), abs(last)) * bins < span * 2.0**36
    factor = bins / span
    near = 2.0**-10
    partial = np.zeros(4 * bins, np.int64)  # copy k of bin b at k·bins + b
    nans = 0
    outside = 0
    slots = np.empty(_HISTOGRAM_BLOCK, np.int32)  # bins <= 4096: 4·bins fits
    copies = np.empty(_HISTOGRAM_BLOCK, np.int32)
    for i in range(_HISTOGRAM_BLOCK):
        copies[i] = (i & 3) * bins
    for start in range(0, x.size, _HISTOGRAM_BLOCK):
        size = min(_HISTOGRAM_BLOCK, x.size - start)
        block = x[start : start + size]  # a view: plain indices, no wraparound checks
        if scaled:
            for i in range(size):
                v = np.float64(block[i])
                inside = (v >= first) & (v <= last)  # & not `and`: no branch (NaN: False)
                position = (v - first) * factor if inside else 0.5  # kept finite
                whole = np.floor(position)
                fraction = position - whole
                clear = inside & (fraction > near) & (fraction < 1.0 - near)
                slots[i] = np.int32(whole) + copies[i] if clear else np.int32(-1)
        else:
            slots[:size] = -1
        for i in range(size):
            slot = slots[i]
            if slot >= 0:
                partial[slot] += 1
                continue
            v = np.float64(block[i])
            if not first <= v <= last:
                if np.isnan(v):
                    nans += 1
                else:
                    outside += 1
                continue
            partial[copies[i] + _numpy_bin(v, edges, bins, span, scaled, factor)] += 1
    for copy in range(4):
        for index in range(bins):
            counts[index] += partial[copy * bins + index]
    return nans, outside


def check_histogram(params: dict) -> None:
    chosen = params.get("range")
    if chosen is not None:
        low, high = chosen
        if not low < high or not math.isfinite(high - low):
            raise ParamError(
                [{"field": "params.range", "message": "expected [lo, hi] with lo < hi"}]
            )


def run_histogram(x: np.ndarray, params: dict) -> Outputs:
    bins = params["bins"]
    chosen = params.get("range")
    if chosen is not None:
        low, high = chosen
    else:  # the data's finite span: only known now, so an overflow is an input error
        low, high, found = _finite_range(x)
        if not found:
            low, high = 0.0, 1.0
        elif low == high:
            low, high = low - 0.5, high + 0.5
        if not math.isfinite(high - low):
            raise InputError("range_overflow", "the data span overflows float64; pass range")
    edges = np.linspace(float(low), float(high), bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    nans, outside = _histogram(x, edges, counts)
    return {"counts": counts, "edges": edges, "nan_count": int(nans), "outside_count": int(outside)}


register(
    Kernel(
        name="histogram",
        summary="Counts in equal-width bins, like numpy.histogram; NaN is counted apart.",
        params=schema(
            {
                "bins": integer(1, 4096, default=10, description="number of bins"),
                "range": number_array(
                    2,
                    2,
                    description="[lo, hi] with lo < hi; samples outside are not binned. "
                    "Default: the min and max of the finite samples (±0.5 if equal, "
                    "[0, 1] if there are none)",
                ),
            }
        ),
        output={
            "counts": "int64 count per bin; bins are [e_i, e_i+1) except the last, which is closed",
            "edges": "float64 bin edges, bins + 1 of them",
            "nan_count": "number of NaN samples (never binned)",
            "outside_count": "number of non-NaN samples outside the range, ±inf included",
        },
        run=run_histogram,
        check=check_histogram,
        example={"params": {"bins": 4}, "input": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0]},
        inputs=InputRules(
            nonfinite="NaN samples are not binned and are counted in `nan_count`; ±inf "
            "never widens the automatic range and is counted in `outside_count`.",
        ),
    )
)


@njit(nogil=True, cache=True)
def _quantiles(x, q, out):
    """Write np.nanquantile(x, q, method="linear") into `out` (see `_lerp` for ±inf);
    return the number of NaN samples."""
    ordered = np.empty(x.size, dtype=np.float64)
    size = 0
    for value in x:
        if not np.isnan(value):
            ordered[size] = value
            size += 1
    # Only the order statistics the quantiles read are needed: partitioning at them
    # (introselect, linear time) puts the same values there as a full sort would.
    needed = np.empty(2 * q.size, dtype=np.int64)
    for i in range(q.size):
        below = min(math.floor((size - 1) * q[i]), size - 1) if size else 0
        needed[2 * i] = below
        needed[2 * i + 1] = min(below + 1, size - 1) if size else 0
    if size:
        ordered = np.partition(ordered[:size], np.unique(needed))
    for i in range(q.size):
        if size == 0:
            out[i] = np.nan
            continue
        position = (size - 1) * q[i]  # numpy's virtual index for method="linear"
        if position >= size - 1:
            out[i] = ordered[size - 1]
            continue
        below = math.floor(position)
        out[i] = _lerp(ordered[below], ordered[below + 1], position - below)
    return x.size - size


@njit(nogil=True, cache=True)
def _lerp(a, b, t):
    """numpy's two-sided lerp (exact at both ends), extended to ±inf: numpy returns NaN as
    soon as an inf is involved; here the result is the infinite end (NaN only between -inf
    and +inf, where it really is undefined)."""
    if t == 0.0 or a == b:
        return a
    if np.isinf(a) or np.isinf(b):
        if np.isinf(a) and np.isinf(b):
            return np.nan
        return a if np.isinf(a) else b
    if t >= 0.5:
        return b - (b - a) * (1.0 - t)
    return a + (b - a) * t


def check_quantiles(params: dict) -> None:
    bad = [i for i, p in enumerate(params["q"]) if not 0.0 <= p <= 1.0]
    if bad:
        raise ParamError([{"field": "params.q", "message": f"item {bad[0]}: must be in [0, 1]"}])


def run_quantiles(x: np.ndarray, params: dict) -> Outputs:
    q = np.array(params["q"], dtype=np.float64)
    out = np.empty(q.size, dtype=np.float64)
    nans = _quantiles(x, q, out)
    return {"values": out, "nan_count": int(nans)}


register(
    Kernel(
        name="quantiles",
        summary="Quantiles with linear interpolation, like numpy.nanquantile(method='linear').",
        params=schema(
            {
                "q": number_array(
                    1,
                    101,
                    default=[0.5],
                    description="probabilities in [0, 1]",
                ),
            }
        ),
        output={
            "values": "float64, one quantile per item of q, in order; NaN if there are no "
            "non-NaN samples",
            "nan_count": "number of NaN samples left out",
        },
        run=run_quantiles,
        check=check_quantiles,
        example={"params": {"q": [0.1, 0.5, 0.9]}, "input": [3.0, 1.0, 4.0, 1.0, 5.0, 9.0]},
        inputs=InputRules(
            nonfinite="NaN samples are left out (like numpy.nanquantile) and counted in "
            "`nan_count`; ±inf take part as the extreme values they are, and a quantile "
            "that falls between an inf and its neighbour is that inf.",
        ),
    )
)
