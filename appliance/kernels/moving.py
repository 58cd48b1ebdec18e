"""Moving-window loops: mean and standard deviation of every full window of `window` samples.

Both work in blocks of `window` outputs (the mean of a window of at most 8 samples is
summed directly instead): the windows of the block starting at s lie in
x[s : s + 2·window - 1], and nothing carries from one block to the next, so rounding from
a sample, however large, reaches only the 2·window outputs whose blocks hold it (the same
bound as rebuilding a running accumulator every `window` outputs). The kernels around
these loops are in appliance/kernels/stats.py.

Speed: a float64 add takes a few cycles before the next add in its chain can start, so the
loops keep two or more independent chains in flight and leave their non-chained work to
loops with no chain, which vectorise; slices are taken as views so that indices are plain
(numba checks a possibly negative index for wraparound on every access, which stops
vectorisation).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Windows up to this long are summed directly, every output from its own samples (see
# _mean_direct); longer ones by the chunked suffix/prefix sums of _mean_chunks.
_DIRECT_MAX_WINDOW = 8
_DIRECT_BLOCK = 256  # outputs summed together: the block stays in L1 for every offset


@njit(nogil=True, cache=True)
def _mean_direct(x, window, inverse, out):
    """out[j] = (x[j] + x[j+1] + ... + x[j+window-1]) · inverse, in that order. Offsets
    outermost over a block of outputs, so that the inner loop vectorises without reordering
    any output's sum: window·n additions, cheaper than the chunked sums for short windows."""
    totals = np.empty(_DIRECT_BLOCK)
    for start in range(0, out.size, _DIRECT_BLOCK):
        size = min(_DIRECT_BLOCK, out.size - start)
        acc = totals[:size]
        first = x[start : start + size]  # views: plain indices, no wraparound checks
        for i in range(size):
            acc[i] = first[i]
        for k in range(1, window):
            shifted = x[start + k : start + k + size]
            for i in range(size):
                acc[i] += shifted[i]
        block = out[start : start + size]
        for i in range(size):
            block[i] = acc[i] * inverse


@njit(nogil=True, cache=True)
def _mean_chunks(x, window, inverse, out):
    """Chunk c is x[c·w : (c+1)·w] (w = window). Output j = (c-1)·w + r, the window starting
    at r in chunk c-1, is (B[r] + F[r]) · inverse, with B[r] = sum(chunk c-1 [r:]) summed
    from its end backwards and F[r] = sum(chunk c [:r]) summed forwards.

    One pass per chunk c runs both sums (two independent chains: the loop is bound by one
    add's latency, not two), F over chunk c just arriving from memory and B over chunk c-1
    still in L1, reading every sample in address order once; a second loop, with no chain,
    writes block c-1. Scratch: 2·min(w, len(out)) float64."""
    outputs = out.size
    w = window
    size = min(w, outputs)
    forward = np.empty(size)
    backward = np.empty(size)
    backward_reversed = backward[::-1]  # views with plain indices: no wraparound checks
    c = 1
    while c * w < outputs:  # block c-1 and chunk c are whole
        chunk = x[c * w : c * w + w]
        before = x[c * w - w : c * w][::-1]
        f = 0.0
        b = 0.0
        for r in range(w):
            forward[r] = f
            f += chunk[r]
            b += before[r]
            backward_reversed[r] = b
        block = out[c * w - w : c * w]
        for r in range(w):
            block[r] = (backward[r] + forward[r]) * inverse
        c += 1
    start = c * w - w  # the last block: count <= w outputs, from a chunk that may be short
    count = outputs - start
    b = 0.0
    for q in range(w - 1, count - 1, -1):
        b += x[start + q]
    for q in range(count - 1, -1, -1):
        b += x[start + q]
        backward[q] = b
    f = 0.0
    for r in range(count):
        out[start + r] = (backward[r] + f) * inverse
        if r + 1 < count:
            f += x[start + w + r]


@njit(nogil=True, cache=True)
def moving_mean(x, window, out):
    """out[j] = mean(x[j:j+window]) in float64 for j < len(out) = len(x) - window + 1.

    Windows of up to _DIRECT_MAX_WINDOW samples are summed directly. Longer ones are cut in
    blocks of `window` outputs: window j is a suffix of its block's first `window` samples
    plus a prefix of the next `window` (see _mean_chunks), so no sample is ever subtracted
    and nothing carries from one block to the next. Either way plain IEEE sums give the
    documented non-finite results with no special case: a window with a NaN, or with both
    infinities, is NaN; with one kind of inf, that inf. The sum is multiplied by 1/window
    (within an ulp of dividing)."""
    if out.size <= 0:
        return
    inverse = 1.0 / window
    if window <= _DIRECT_MAX_WINDOW:
        _mean_direct(x, window, inverse, out)
    else:
        _mean_chunks(x, window, inverse, out)


@njit(nogil=True, cache=True)
def _shifted_sums(x, start, stop, shift):
    """(sum(y), sum(y²)) for y = x[start:stop] - shift, in four interleaved partial sums."""
    a1 = b1 = c1 = d1 = 0.0
    a2 = b2 = c2 = d2 = 0.0
    i = start
    while i + 4 <= stop:
        a = x[i] - shift
        b = x[i + 1] - shift
        c = x[i + 2] - shift
        d = x[i + 3] - shift
        a1 += a
        b1 += b
        c1 += c
        d1 += d
        a2 += a * a
        b2 += b * b
        c2 += c * c
        d2 += d * d
        i += 4
    for j in range(i, stop):
        a = x[j] - shift
        a1 += a
        a2 += a * a
    return (a1 + b1) + (c1 + d1), (a2 + b2) + (c2 + d2)


@njit(nogil=True, cache=True)
def _std_block_slow(x, s, count, window, ddof, out):
    """The block of `count` outputs at s, for a block holding a NaN or inf: each window
    with one is NaN, the others from sums over their finite samples (shifted by their mean,
    as the fast loop)."""
    finite = 0
    shift = 0.0
    for i in range(s, s + window + count - 1):
        value = np.float64(x[i])
        if np.isfinite(value):
            finite += 1
            shift += value
    shift = shift / finite if finite else 0.0
    if not np.isfinite(shift):
        shift = 0.0
    for j in range(s, s + count):
        sum1 = 0.0
        sum2 = 0.0
        bad = False
        for i in range(j, j + window):
            value = np.float64(x[i])
            bad |= not np.isfinite(value)
            y = value - shift
            sum1 += y
            sum2 += y * y
        if bad:
            out[j] = np.nan
        else:
            m2 = sum2 - sum1 * sum1 / window
            out[j] = np.sqrt((0.0 if m2 < 0.0 else m2) / (window - ddof))


@njit(nogil=True, cache=True)
def _finish_std(m2, scale, out):
    """out[r] = sqrt(max(m2[r], 0) · scale): rounding below 0 is 0, NaN stays NaN. A loop of
    its own, with plain indices, so that the square roots vectorise."""
    for r in range(out.size):
        value = m2[r]
        out[r] = np.sqrt((0.0 if value < 0.0 else value) * scale)


@njit(nogil=True, cache=True)
def moving_std(x, window, ddof, out):
    """out[j] = std(x[j:j+window], ddof) for j < len(out) = len(x) - window + 1; a window
    with a NaN or inf is NaN. Needs ddof < window.

    From the running sums S1 and S2 of y = x - c and y² over the window: m2 = S2 - S1²/window.
    A sample replacing another updates S2 by (new - old)·(new + old - 2c), Welford's update
    with the mean held at c. Each block starts from sums rebuilt over its first window, with
    c the mean of the window just before it (or of its own first window), so c stays near
    the windows' means, a large offset costs nothing, and drift spans at most 2·window
    updates. Non-finite samples poison the running sums, which is how a block holding one is
    found; it is then redone by a slower loop that skips them."""
    outputs = out.size
    if outputs <= 0:
        return
    inverse = 1.0 / window
    scale = 1.0 / (window - ddof)
    m2 = np.empty(min(window, outputs), np.float64)
    mean = np.nan  # the mean of the last window of the previous block, if finite
    for s in range(0, outputs, window):
        count = min(window, outputs - s)
        if not np.isfinite(mean):
            mean = _shifted_sums(x, s, s + window, 0.0)[0] * inverse
        shift = mean if np.isfinite(mean) else 0.0
        sum1, sum2 = _shifted_sums(x, s, s + window, shift)
        m2[0] = sum2 - sum1 * sum1 * inverse
        twice = 2.0 * shift
        arriving = x[s + window : s + window + count - 1]  # views: plain indices, no
        leaving = x[s : s + count - 1]  # wraparound checks in the loop
        updated = m2[1:count]
        for r in range(count - 1):
            value = np.float64(arriving[r])
            old = np.float64(leaving[r])
            sum1 += value - old
            sum2 += (value - old) * (value + old - twice)
            updated[r] = sum2 - sum1 * sum1 * inverse
        if np.isfinite(sum1) and np.isfinite(sum2):
            _finish_std(m2, scale, out[s : s + count])
            mean = shift + sum1 * inverse
        else:
            _std_block_slow(x, s, count, window, ddof, out)
            mean = np.nan
