"""The numba side of the `peaks` kernel: scipy.signal.find_peaks' rules, in linear time.

The steps and their order are scipy's (local maxima → height → distance → prominence), so
the same input gives the same peaks. One step is computed differently: scipy finds each
peak's prominence by walking outwards until a higher sample, which is O(n) per peak and
O(n²) on a rising sawtooth; a kernel holds a worker thread that cannot be cancelled, so
here two monotonic-stack passes give every prominence in O(n) total (the values are equal).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def local_maxima(x):
    """Indices of samples higher than both neighbours; a flat top (plateau) counts once, at
    its middle sample ((first + last) // 2). The first and last samples are never peaks."""
    peaks = np.empty(x.size // 2 + 1, dtype=np.int64)
    count = 0
    i = 1
    last = x.size - 1
    while i < last:
        if x[i - 1] < x[i]:
            ahead = i + 1
            while ahead < last and x[ahead] == x[i]:
                ahead += 1
            if x[ahead] < x[i]:
                peaks[count] = (i + ahead - 1) // 2
                count += 1
                i = ahead
        i += 1
    return peaks[:count]


@njit(nogil=True, cache=True)
def select_by_distance(peaks, heights, distance):
    """Keep-mask: from the highest peak down, drop every peak closer than `distance` to a
    kept one. Equal heights: the later peak is taken first (a stable sort, read backwards),
    which is what scipy does whenever its sort happens to be stable."""
    size = peaks.size
    keep = np.ones(size, dtype=np.bool_)
    order = np.argsort(heights, kind="mergesort")
    for rank in range(size - 1, -1, -1):
        j = order[rank]
        if not keep[j]:
            continue
        k = j - 1
        while k >= 0 and peaks[j] - peaks[k] < distance:
            keep[k] = False
            k -= 1
        k = j + 1
        while k < size and peaks[k] - peaks[j] < distance:
            keep[k] = False
            k += 1
    return keep


@njit(nogil=True, cache=True)
def _contour_minima(x, peaks, forward):
    """For each peak p: min(x) between p and the nearest strictly higher sample on one side
    (or the end of the signal), p included.

    Stack entries are samples not yet overtaken by a higher-or-equal one, with the minimum
    of the stretch since the entry below; popping merges those stretches.
    """
    n = x.size
    minima = np.empty(peaks.size, dtype=np.float64)
    stack_value = np.empty(n, dtype=np.float64)
    stack_min = np.empty(n, dtype=np.float64)
    top = 0
    j = 0 if forward else peaks.size - 1
    for step in range(n):
        if j < 0 or j >= peaks.size:
            break
        i = step if forward else n - 1 - step
        value = np.float64(x[i])
        low = value
        while top > 0 and stack_value[top - 1] <= value:
            top -= 1
            low = min(low, stack_min[top])
        stack_value[top] = value
        stack_min[top] = low
        top += 1
        if peaks[j] == i:
            minima[j] = low
            j += 1 if forward else -1
    return minima


@njit(nogil=True, cache=True)
def prominences(x, peaks):
    """Height of each peak above the higher of its two contour minima (scipy's definition
    with an unlimited window)."""
    left = _contour_minima(x, peaks, True)
    right = _contour_minima(x, peaks, False)
    out = np.empty(peaks.size, dtype=np.float64)
    for j in range(peaks.size):
        out[j] = np.float64(x[peaks[j]]) - max(left[j], right[j])
    return out


@njit(nogil=True, cache=True)
def find_peaks(x, distance, min_prominence, min_height, has_height):
    """(indices, prominences) of the peaks that pass every condition, in index order."""
    peaks = local_maxima(x)
    if has_height:
        high = np.empty(peaks.size, dtype=np.bool_)
        for j in range(peaks.size):
            high[j] = np.float64(x[peaks[j]]) >= min_height
        peaks = peaks[high]
    if distance > 1 and peaks.size > 1:
        heights = np.empty(peaks.size, dtype=np.float64)
        for j in range(peaks.size):
            heights[j] = x[peaks[j]]
        peaks = peaks[select_by_distance(peaks, heights, distance)]
    prominence = prominences(x, peaks)
    prominent = prominence >= min_prominence
    return peaks[prominent], prominence[prominent]
