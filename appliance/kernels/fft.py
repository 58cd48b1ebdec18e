"""A small FFT that runs inside numba: radix-2 Cooley–Tukey, and Bluestein for other lengths.

numba cannot call `numpy.fft` from nopython code, and a kernel must run without the GIL, so
the spectral kernels need an FFT of their own. This one is deliberately plain:

- `fft_radix2(a)`: in-place iterative radix-2 decimation-in-time for power-of-two lengths;
  twiddle factors are computed once per call with `cos`/`sin` (no recurrence, so no drift).
- `fft(a)`: any length n ≥ 1. Powers of two go to `fft_radix2`; other lengths use
  Bluestein's chirp-z algorithm, which rewrites the length-n DFT as a circular convolution
  of length m ≥ 2n - 1 (a power of two) computed with three radix-2 FFTs. Cost
  O(m log m), memory about 3·m complex values.
- `rfft(x)`: the n//2 + 1 non-negative-frequency bins of a real signal. An even length is
  packed into a complex signal of half the length (half the work), then unpacked.

Accuracy: the error is that of a float64 FFT, about eps·log2(m) relative to the largest
bin; the tests hold it to 1e-9 of the largest magnitude against `numpy.fft.rfft`.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def is_power_of_two(n):
    return n > 0 and (n & (n - 1)) == 0


@njit(nogil=True, cache=True)
def fft_radix2(a):
    """Replace `a` (complex128, length a power of two) by its forward DFT."""
    n = a.size
    j = 0
    for i in range(1, n):  # bit-reversal permutation
        bit = n >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            a[i], a[j] = a[j], a[i]
    twiddle = np.empty(n // 2, dtype=np.complex128)
    for k in range(n // 2):
        angle = -2.0 * np.pi * k / n
        twiddle[k] = complex(np.cos(angle), np.sin(angle))
    size = 2
    while size <= n:
        half = size // 2
        stride = n // size
        for start in range(0, n, size):
            for k in range(half):
                t = twiddle[k * stride] * a[start + k + half]
                a[start + k + half] = a[start + k] - t
                a[start + k] = a[start + k] + t
        size *= 2


@njit(nogil=True, cache=True)
def _bluestein(a):
    n = a.size
    m = 1
    while m < 2 * n - 1:
        m *= 2
    # chirp[k] = exp(-iπk²/n). k² is reduced modulo 2n in integers first: the angle is
    # periodic in k² with period 2n, and a small exact argument keeps cos/sin accurate.
    chirp = np.empty(n, dtype=np.complex128)
    for k in range(n):
        angle = -np.pi * ((k * k) % (2 * n)) / n
        chirp[k] = complex(np.cos(angle), np.sin(angle))
    signal = np.zeros(m, dtype=np.complex128)
    kernel = np.zeros(m, dtype=np.complex128)
    for k in range(n):
        signal[k] = a[k] * chirp[k]
    kernel[0] = chirp[0].conjugate()
    for k in range(1, n):
        kernel[k] = chirp[k].conjugate()
        kernel[m - k] = kernel[k]
    fft_radix2(signal)
    fft_radix2(kernel)
    # Inverse FFT of the product via conj(FFT(conj(.))) / m.
    for k in range(m):
        signal[k] = (signal[k] * kernel[k]).conjugate()
    fft_radix2(signal)
    out = np.empty(n, dtype=np.complex128)
    for k in range(n):
        out[k] = chirp[k] * signal[k].conjugate() / m
    return out


@njit(nogil=True, cache=True)
def fft(a):
    """The forward DFT of `a` (complex128, any length), as a new array."""
    if is_power_of_two(a.size):
        out = a.copy()
        fft_radix2(out)
        return out
    return _bluestein(a)


@njit(nogil=True, cache=True)
def rfft(x):
    """Bins 0..n//2 of the DFT of the real float64 signal `x` (n ≥ 1), like numpy's rfft."""
    n = x.size
    bins = n // 2 + 1
    if n % 2:
        full = np.empty(n, dtype=np.complex128)
        for i in range(n):
            full[i] = x[i]
        return fft(full)[:bins]
    # Even n: z[j] = x[2j] + i·x[2j+1] has the spectra of the even and odd samples as its
    # conjugate-symmetric and antisymmetric parts; one half-length FFT gives both.
    half = n // 2
    packed = np.empty(half, dtype=np.complex128)
    for j in range(half):
        packed[j] = complex(x[2 * j], x[2 * j + 1])
    z = fft(packed)
    out = np.empty(bins, dtype=np.complex128)
    for k in range(bins):
        zk = z[k % half]
        zc = z[(half - k) % half].conjugate()
        even = 0.5 * (zk + zc)
        odd = -0.5j * (zk - zc)
        angle = -2.0 * np.pi * k / n
        out[k] = even + complex(np.cos(angle), np.sin(angle)) * odd
    return out
