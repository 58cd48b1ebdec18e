"""Moving-window loops: mean and standard deviation of every full window of `window` samples.

Each keeps one running accumulator, updated as a sample enters and another leaves, and
rebuilds it from the window's samples every `window` outputs: rounding drift then spans at
most 2·window updates however long the input, for about one extra pass. Non-finite samples
are counted instead of accumulated, so they leave the window cleanly instead of poisoning
the accumulator. The kernels around these loops are in appliance/kernels/stats.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def _kind(value):
    """0 for a finite value, 1 for NaN, 2 for +inf, 3 for -inf."""
    if np.isfinite(value):
        return 0
    if np.isnan(value):
        return 1
    return 2 if value > 0 else 3


@njit(nogil=True, cache=True)
def _finite_sum(x, start, stop):
    total = 0.0
    for i in range(start, stop):
        value = np.float64(x[i])
        if np.isfinite(value):
            total += value
    return total


@njit(nogil=True, cache=True)
def moving_mean(x, window, out):
    """out[j] = mean(x[j:j+window]) in float64 for j < len(out) = len(x) - window + 1.

    A window with a NaN, or with both infinities, is NaN; with one kind of inf, that inf."""
    counts = np.zeros(4, np.int64)  # samples in the window by _kind; [0] is unused
    bad = 0  # non-finite samples in the window
    total = 0.0  # sum of the finite samples in the window
    rebuild_in = window + 1  # outputs until the rebuild at start = window, 2·window, ...
    for i in range(x.size):
        value = np.float64(x[i])
        old = np.float64(x[i - window]) if i >= window else 0.0
        if np.isfinite(value) and np.isfinite(old):
            total += value - old
        else:
            kind = _kind(value)
            counts[kind] += 1
            bad += kind > 0
            if kind == 0:
                total += value
            if i >= window:
                kind = _kind(old)
                counts[kind] -= 1
                bad -= kind > 0
                if kind == 0:
                    total -= old
        start = i - window + 1
        if start < 0:
            continue
        rebuild_in -= 1
        if rebuild_in == 0:
            rebuild_in = window
            total = _finite_sum(x, start, i + 1)
        if bad == 0:
            out[start] = total / window
        elif counts[1] > 0 or (counts[2] > 0 and counts[3] > 0):
            out[start] = np.nan
        else:
            out[start] = np.inf if counts[2] > 0 else -np.inf


@njit(nogil=True, cache=True)
def _finite_moments(x, start, stop):
    """Count, mean and sum of squared deviations of the finite samples, in two passes."""
    count = 0
    total = 0.0
    for i in range(start, stop):
        value = np.float64(x[i])
        if np.isfinite(value):
            count += 1
            total += value
    if count == 0:
        return 0, 0.0, 0.0
    mean = total / count
    m2 = 0.0
    for i in range(start, stop):
        value = np.float64(x[i])
        if np.isfinite(value):
            m2 += (value - mean) * (value - mean)
    return count, mean, m2


@njit(nogil=True, cache=True)
def moving_std(x, window, ddof, out):
    """out[j] = std(x[j:j+window], ddof) for j < len(out) = len(x) - window + 1, by
    Welford's add and remove updates; a window with a NaN or inf is NaN. Needs ddof < window.
    """
    bad = 0  # non-finite samples in the window
    count = 0  # Welford accumulator over the finite samples in the window
    mean = 0.0
    m2 = 0.0
    inverse = 1.0 / window
    rebuild_in = window + 1  # outputs until the rebuild at start = window, 2·window, ...
    for i in range(x.size):
        value = np.float64(x[i])
        if i >= window and count == window and np.isfinite(value):
            old = np.float64(x[i - window])  # finite: count == window means bad == 0
            # One sample replaces another: the add and remove updates in one step.
            delta = value - old
            new_mean = mean + delta * inverse
            m2 += delta * (value - new_mean + old - mean)
            mean = new_mean
        else:
            if np.isfinite(value):
                count += 1
                delta = value - mean
                mean += delta / count
                m2 += delta * (value - mean)
            else:
                bad += 1
            if i >= window:
                old = np.float64(x[i - window])
                if not np.isfinite(old):
                    bad -= 1
                elif count == 1:
                    count, mean, m2 = 0, 0.0, 0.0
                else:
                    count -= 1
                    delta = old - mean
                    mean -= delta / count
                    m2 -= delta * (old - mean)
        start = i - window + 1
        if start < 0:
            continue
        rebuild_in -= 1
        if rebuild_in == 0:
            rebuild_in = window
            count, mean, m2 = _finite_moments(x, start, i + 1)
        if bad > 0:
            out[start] = np.nan
        else:
            out[start] = np.sqrt(max(m2, 0.0) / (window - ddof))
