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


@njit(nogil=True, cache=True)
def _goertzel(x, omega):
    """|Σ x[n]·exp(-iωn)|² by the Goertzel recurrence in Reinsch's form.

    The plain recurrence s[n] = x[n] + 2cos(ω)s[n-1] - s[n-2] loses about log10(n²)
    digits near ω = 0 and ω = π (at n = 10⁶ only ~5 remain). Reinsch's variant carries
    d = s[n] ∓ s[n-1] instead, with the small coefficient 4sin²(ω/2) (or 4cos²(ω/2)), and
    keeps full float64 accuracy over the whole band.
    """
    s = 0.0
    d = 0.0
    if np.cos(omega) >= 0.0:
        lam = -4.0 * np.sin(0.5 * omega) ** 2  # 2cos(ω) - 2
        for value in x:
            d = d + lam * s + np.float64(value)
            s = s + d
        power = d * d - lam * s * (s - d)
    else:
        mu = 4.0 * np.cos(0.5 * omega) ** 2  # 2cos(ω) + 2
        for value in x:
            d = np.float64(value) + mu * s - d
            s = d - s
        power = d * d - mu * s * (d - s)
    return max(power, 0.0)


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
