"""Frequency content of a window: the magnitude spectrum (FFT) and one bin (Goertzel).

Both work in float64 whatever the input dtype, and refuse NaN and inf: a single non-finite
sample spreads into every bin, so there is nothing useful to return.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from appliance.kernels.fft import rfft
from appliance.kernels.params import ParamError, choice, number, schema
from appliance.kernels.registry import register
from appliance.kernels.spec import InputRules, Kernel, Outputs

FINITE_ONLY = InputRules(
    min_length=1,
    max_length=1 << 20,
    allow_nonfinite=False,
    nonfinite="Refused: one NaN or inf sample would spread into every frequency bin.",
)


@njit(nogil=True, cache=True)
def _spectrum(x, hann, amplitude):
    """|DFT| of `x` (float64, windowed in place), bins 0..n//2, optionally amplitude-scaled."""
    n = x.size
    gain = float(n)  # sum of the window
    if hann and n > 1:  # a one-sample periodic Hann window would be 0; keep it at 1
        gain = 0.0
        for i in range(n):
            weight = 0.5 - 0.5 * np.cos(2.0 * np.pi * i / n)
            x[i] *= weight
            gain += weight
    bins = rfft(x)
    magnitude = np.empty(bins.size, dtype=np.float64)
    for k in range(bins.size):
        magnitude[k] = abs(bins[k])
        if amplitude:
            one_sided = 1.0 if k == 0 or 2 * k == n else 2.0
            magnitude[k] *= one_sided / gain
    return magnitude


def run_spectrum(x: np.ndarray, params: dict) -> Outputs:
    work = x.astype(np.float64)  # always a copy: the window is applied in place
    magnitude = _spectrum(work, params["window"] == "hann", params["scale"] == "amplitude")
    frequency = np.arange(x.size // 2 + 1, dtype=np.float64) * (params["sample_rate_hz"] / x.size)
    return {"frequency_hz": frequency, "magnitude": magnitude}


register(
    Kernel(
        name="spectrum",
        summary="Magnitude spectrum of a real signal of any length (radix-2 or Bluestein FFT).",
        params=schema(
            {
                "sample_rate_hz": number(
                    exclusive_minimum=0.0,
                    default=1.0,
                    description="sampling rate, only used to label the bins in Hz",
                ),
                "window": choice(
                    "none",
                    "hann",
                    default="none",
                    description="taper applied before the FFT: none, or the periodic Hann "
                    "window w[i] = 0.5 - 0.5·cos(2πi/n) (scipy's hann(n, sym=False))",
                ),
                "scale": choice(
                    "magnitude",
                    "amplitude",
                    default="magnitude",
                    description="magnitude: |X[k]| of the windowed signal; amplitude: "
                    "c·|X[k]| / Σw with c = 1 at DC and Nyquist and 2 elsewhere, so a "
                    "sine of amplitude A on a bin reads A (a constant C reads C at DC)",
                ),
            }
        ),
        output={
            "frequency_hz": "bin frequencies k·sample_rate/n for k = 0..n//2 (float64)",
            "magnitude": "one value per bin, float64 whatever the input dtype (it comes "
            "from complex float64 bins)",
        },
        run=run_spectrum,
        example={
            "params": {"sample_rate_hz": 8.0, "scale": "amplitude"},
            "input": [0.0, 1.0, 0.0, -1.0, 0.0, 1.0, 0.0, -1.0],
        },
        inputs=FINITE_ONLY,
    )
)


_GOERTZEL_PHASES = 8  # independent recurrences, one per residue n mod 8: two AVX2 vectors


@njit(nogil=True, cache=True)
def _goertzel(x, omega):
    """|Σ x[n]·exp(-iωn)|², as P = 8 interleaved Goertzel recurrences in Reinsch's form.

    Polyphase split: with n = P·m + p, X(ω) = Σ_p exp(-iωp) · Σ_m x[Pm+p]·exp(-iθm), θ = Pω.
    Each inner sum is a Goertzel recurrence at θ over every P-th sample; the P of them run
    in lock-step over contiguous loads (independent chains, so not latency bound), and their
    final states give the complex sums A_p = Σ_m x[Pm+p]·exp(iθ(M-1-m)), which are rotated
    by exp(iω·r_p) (r_p < P, the distance from the phase's last sample to the last full row)
    and added; the < P trailing samples are added directly. Only |X|² is returned, so the
    common unit factor exp(-iω·last) never has to be computed.

    The plain recurrence s[m] = x + 2cos(θ)s[m-1] - s[m-2] loses about log10(m²) digits
    near θ = 0 and θ = π. Reinsch's variant carries d = s[m] ∓ s[m-1] instead, with the
    small coefficient 4sin²(θ/2) (or 4cos²(θ/2)), and keeps full float64 accuracy over the
    whole band; the end states become A_p with 1 - exp(-iθ) = 2sin²(θ/2) + i·sin(θ) (or
    1 + exp(-iθ) = 2cos²(θ/2) - i·sin(θ)), again without cancellation.
    """
    phases = _GOERTZEL_PHASES
    rows = x.size // phases
    theta = phases * omega
    s = np.zeros(phases)
    d = np.zeros(phases)
    near_zero = np.cos(theta) >= 0.0
    if near_zero:
        lam = -4.0 * np.sin(0.5 * theta) ** 2  # 2cos(θ) - 2
        for row in range(rows):
            base = row * phases
            for p in range(phases):
                d[p] = d[p] + lam * s[p] + np.float64(x[base + p])
                s[p] = s[p] + d[p]
    else:
        mu = 4.0 * np.cos(0.5 * theta) ** 2  # 2cos(θ) + 2
        for row in range(rows):
            base = row * phases
            for p in range(phases):
                d[p] = np.float64(x[base + p]) + mu * s[p] - d[p]
                s[p] = d[p] - s[p]
    back = complex(np.cos(theta), -np.sin(theta))  # exp(-iθ)
    total = 0j
    for p in range(phases if rows else 0):
        if near_zero:  # s = s[M-1], s - d = s[M-2]: A = s·(1 - exp(-iθ)) + d·exp(-iθ)
            a = s[p] * complex(-0.5 * lam, np.sin(theta)) + d[p] * back
        else:  # s = s[M-1], d - s = s[M-2]: A = s·(1 + exp(-iθ)) - d·exp(-iθ)
            a = s[p] * complex(0.5 * mu, -np.sin(theta)) - d[p] * back
        turn = omega * (phases - 1 - p)
        total += a * complex(np.cos(turn), np.sin(turn))
    last = rows * phases - 1  # the phases' sums are relative to this sample
    for n in range(rows * phases, x.size):
        turn = -omega * (n - last)
        total += np.float64(x[n]) * complex(np.cos(turn), np.sin(turn))
    return total.real * total.real + total.imag * total.imag


def check_goertzel(params: dict) -> None:
    rate = params["sample_rate_hz"]
    if params["frequency_hz"] > rate / 2:
        raise ParamError(
            [
                {
                    "field": "params.frequency_hz",
                    "message": f"must be <= sample_rate_hz / 2 = {rate / 2}",
                }
            ]
        )


def run_goertzel(x: np.ndarray, params: dict) -> Outputs:
    rate = params["sample_rate_hz"]
    frequency = params["frequency_hz"]
    return {"power": float(_goertzel(x, 2.0 * np.pi * frequency / rate))}


register(
    Kernel(
        name="goertzel",
        summary="Power |X(f)|² of the DFT at one (possibly non-integer-bin) frequency.",
        params=schema(
            {
                "frequency_hz": number(
                    minimum=0.0,
                    description="frequency to measure, 0 ≤ f ≤ sample_rate_hz / 2",
                ),
                "sample_rate_hz": number(
                    exclusive_minimum=0.0, default=1.0, description="sampling rate"
                ),
            },
            required=("frequency_hz",),
        ),
        output={
            "power": "|Σ x[n]·exp(-2πi·f·n/fs)|², unnormalised (a sine of amplitude A on "
            "a bin gives (A·n/2)²); 0.0 for an empty input",
        },
        run=run_goertzel,
        check=check_goertzel,
        example={
            "params": {"frequency_hz": 2.0, "sample_rate_hz": 8.0},
            "input": [0.0, 1.0, 0.0, -1.0, 0.0, 1.0, 0.0, -1.0],
        },
        inputs=InputRules(
            allow_nonfinite=False,
            nonfinite="Refused: a NaN or inf sample makes the power meaningless.",
        ),
    )
)
