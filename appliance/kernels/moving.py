"""Moving-window loops: mean and standard deviation of every full window of `window` samples.

Both work in blocks of `window` outputs: the windows of the block starting at s lie in
x[s : s + 2·window - 1], and nothing carries from one block to the next, so rounding from
a sample, however large, reaches only the 2·window outputs whose blocks hold it (the same
bound as rebuilding a running accumulator every `window` outputs). The kernels around
these loops are in appliance/kernels/stats.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def moving_mean(x, window, out):
    """out[j] = mean(x[j:j+window]) in float64 for j < len(out) = len(x) - window + 1.

    In a block, window j is a suffix of the block's first `window` samples, x[j : s +
    window], plus a prefix of the rest, x[s + window : j + window]: one backward and one
    forward running sum give them all, and no sample is ever subtracted. So plain IEEE sums
    give the documented non-finite results with no special case: a window with a NaN, or
    with both infinities, is NaN; with one kind of inf, that inf. The sum is multiplied by
    1/window (within an ulp of dividing)."""
    outputs = out.size
    if outputs <= 0:
        return
    inverse = 1.0 / window
    suffix = np.empty(min(window, outputs), np.float64)  # sum(x[s + r : s + window])
    for s in range(0, outputs, window):
        count = min(window, outputs - s)
        total = 0.0
        for r in range(window - 1, count - 1, -1):  # only in a short last block
            total += x[s + r]
        for r in range(count - 1, -1, -1):
            total += x[s + r]
            suffix[r] = total
        out[s] = total * inverse
        prefix = 0.0
        for r in range(1, count):
            prefix += x[s + window + r - 1]
            out[s + r] = (suffix[r] + prefix) * inverse


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
        for r in range(1, count):
            value = np.float64(x[s + window + r - 1])
            old = np.float64(x[s + r - 1])
            sum1 += value - old
            sum2 += (value - old) * (value + old - twice)
            m2[r] = sum2 - sum1 * sum1 * inverse
        if np.isfinite(sum1) and np.isfinite(sum2):
            for r in range(count):
                value = m2[r]  # rounding below 0 is 0
                out[s + r] = np.sqrt((0.0 if value < 0.0 else value) * scale)
            mean = shift + sum1 * inverse
        else:
            _std_block_slow(x, s, count, window, ddof, out)
            mean = np.nan
