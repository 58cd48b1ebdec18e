"""Views for loops that run eight independent recurrences side by side (ewma, biquad).

A recurrence waits on its own previous step every sample; eight of them interleaved keep
the floating-point units busy. The loops keep each lane's state in a local variable (an
array of lanes would put a store and a load into every chain), so they take their eight
inputs and outputs as separate views too; these build them.
"""

from __future__ import annotations

from numba import njit


@njit(nogil=True, cache=True)
def eight_blocks(x, start, n):
    """The eight consecutive blocks of `n` samples from x[start], as views (plain indices:
    no wraparound checks in the loops that use them)."""
    return (
        x[start : start + n],
        x[start + n : start + 2 * n],
        x[start + 2 * n : start + 3 * n],
        x[start + 3 * n : start + 4 * n],
        x[start + 4 * n : start + 5 * n],
        x[start + 5 * n : start + 6 * n],
        x[start + 6 * n : start + 7 * n],
        x[start + 7 * n : start + 8 * n],
    )


@njit(nogil=True, cache=True)
def eight_rows(scratch, n, row):
    """Eight rows of `n` values in `scratch`, `row` apart (the callers use a stride off 4
    KiB: rows exactly 4 KiB apart would all map to the same L1 cache set)."""
    return (
        scratch[0:n],
        scratch[row : row + n],
        scratch[2 * row : 2 * row + n],
        scratch[3 * row : 3 * row + n],
        scratch[4 * row : 4 * row + n],
        scratch[5 * row : 5 * row + n],
        scratch[6 * row : 6 * row + n],
        scratch[7 * row : 7 * row + n],
    )
