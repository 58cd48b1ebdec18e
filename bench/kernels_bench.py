"""`kernels`: throughput of every registered kernel on 10⁷ float64 samples, in process.

Each kernel's `run(array, params)` (the wrapper a task calls, output allocation included)
is timed on one array of N = 10⁷ float64 samples (a 1 kHz-period sine plus Gaussian noise;
cusum gets noise with short mean shifts, so that its alarms are rare as in real use) after
a warm-up call that compiles (or loads from the numba cache). Kernel and reference calls
alternate, so both see the same machine; each figure is the median of its runs.

Kinds and references:

- streaming (one pass over the data, no feedback): input bytes/s against `numpy.copy` of
  the same array (its bytes/s = array bytes / time); target >= 60 % of it.
- recurrent (EWMA, biquad IIR, CUSUM): samples/s against the best NumPy/SciPy formulation
  (ewma: `scipy.signal.lfilter([a], [1, a-1], x, zi)`; biquad: the faster of `lfilter(b, a,
  x, zi)` and `sosfilt`; cusum: a vectorised Lindley recursion, see `cusum_numpy`);
  target >= 5x faster.
- other: spectrum (at 2^20 samples, the kernel's cap) vs `numpy.abs(numpy.fft.rfft(x))`,
  quantiles vs `numpy.quantile`, peaks vs `scipy.signal.find_peaks`: ratio, no target.

Plus "pure Python for scale": rms and ewma as plain Python loops over a 10⁵-sample slice
(as a list of floats), scaled to samples/s. Every reference is checked to compute what the
kernel computes (`agrees` in the details).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.signal

from appliance.kernels import load_kernels, warm_all
from appliance.kernels.filters import design_biquad
from bench.common import NUMBA_CACHE, Figure, log

N = 10_000_000
SPECTRUM_N = 1 << 20  # the spectrum kernel takes at most 2^20 samples
PYTHON_N = 100_000
RUNS = 9  # timed runs per function (fewer when a function is slow: see BUDGET_S)
MIN_RUNS = 3
BUDGET_S = 3.0  # per kernel, for all its timed runs and those of its references
TARGET_STREAMING = 0.60
TARGET_RECURRENT = 5.0

PARAMS: dict[str, dict[str, Any]] = {
    "biquad": {"kind": "lowpass", "cutoff_hz": 100.0, "sample_rate_hz": 10_000.0},
    "crest_factor": {},
    "cusum": {"target": 0.0, "k": 1.0, "h": 10.0},
    "ewma": {"alpha": 0.01},
    "fir": {"taps": (np.hanning(34)[1:-1] / np.hanning(34)[1:-1].sum()).tolist()},  # 32 taps
    "goertzel": {"frequency_hz": 50.0, "sample_rate_hz": 1000.0},
    "histogram": {"bins": 100},
    "kurtosis": {"fisher": True},
    "lttb": {"threshold": 1000},
    "peak_to_peak": {},
    "peaks": {"min_distance": 100, "min_prominence": 0.5},
    "quantiles": {"q": [0.01, 0.25, 0.5, 0.75, 0.99]},
    "rms": {},
    "rolling_std": {"window": 64, "ddof": 0},
    "sma": {"window": 64},
    "spectrum": {"sample_rate_hz": 1000.0},
    "zscore_flags": {"threshold": 3.0},
}
RECURRENT = ("biquad", "cusum", "ewma")
OTHER = ("peaks", "quantiles", "spectrum")  # everything else is streaming
PARAM_NOTES = {
    "biquad": "lowpass 100 Hz at 10 kHz",
    "cusum": "k=1 h=10",
    "ewma": "alpha=0.01",
    "fir": "32 taps",
    "histogram": "100 bins, auto range",
    "lttb": "to 1000 points",
    "peaks": "min_distance=100, min_prominence=0.5",
    "quantiles": "5 q",
    "rolling_std": "window 64",
    "sma": "window 64",
    "spectrum": "2^20 samples (its cap)",
}


def signal_input(n: int) -> np.ndarray:
    """A 1 kHz-period unit sine plus N(0, 0.3²) noise: peaks, a spread histogram."""
    rng = np.random.default_rng(20261123)
    return np.sin(2 * np.pi * np.arange(n) / 1000.0) + 0.3 * rng.standard_normal(n)


def cusum_input(n: int) -> np.ndarray:
    """N(0, 1) noise with 20 short (200-sample) shifts of the mean to ±3."""
    rng = np.random.default_rng(20261124)
    x = rng.standard_normal(n)
    for index, start in enumerate(np.linspace(n // 40, n - n // 40, 20).astype(int)):
        x[start : start + 200] += 3.0 if index % 2 == 0 else -3.0
    return x


# References -----------------------------------------------------------------------------


def _lindley_side(z: np.ndarray, h: float, s0: float) -> tuple[list[int], float]:
    """s[i] = max(0, s[i-1] + z[i]) with an alarm (and a reset to 0) whenever s > h.

    Without resets the recursion has a closed form: with C = s0 + cumsum(z), s = C -
    min(0, running min of C). So each block is two ufunc passes, and after an alarm the
    next block starts right behind it; blocks start small after an alarm and double while
    none is found, so dense and rare alarms both cost O(n) passes."""
    alarms: list[int] = []
    n = z.size
    i = 0
    block = 64
    while i < n:
        seg = z[i : i + block]
        c = np.cumsum(seg)
        c += s0
        s = c - np.minimum(np.minimum.accumulate(c), 0.0)
        hit = np.flatnonzero(s > h)
        if hit.size == 0:
            s0 = float(s[-1])
            i += seg.size
            block = min(block * 2, 1 << 16)
            continue
        first = int(hit[0])
        alarms.append(i + first)
        s0 = 0.0
        i += first + 1
        block = 64
    return alarms, s0


def cusum_numpy(
    x: np.ndarray, target: float, k: float, h: float
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The cusum kernel in vectorised NumPy: (alarms, direction, state), as the kernel."""
    up, high = _lindley_side(x - (target + k), h, 0.0)
    down, low = _lindley_side((target - k) - x, h, 0.0)
    alarms = np.array(up + down, dtype=np.int64)
    direction = np.array([1] * len(up) + [-1] * len(down), dtype=np.int8)
    order = np.lexsort((-direction, alarms))  # by index, the up alarm first
    return alarms[order], direction[order], [high, low]


def ewma_python(values: list[float], alpha: float) -> list[float]:
    out = []
    level = values[0]
    for value in values:
        level = level + alpha * (value - level)
        out.append(level)
    return out


def rms_python(values: list[float]) -> float:
    total = 0.0
    for value in values:
        total += value * value
    return math.sqrt(total / len(values))


# Timing ---------------------------------------------------------------------------------


def rotate(
    functions: dict[str, Callable[[], Any]],
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Call each function once untimed (compiling, if it is a kernel), then run them in
    turn, forwards and backwards, RUNS rounds or fewer once BUDGET_S has passed (at least
    MIN_RUNS). Returns what each first call returned and the seconds of every timed call."""
    first = {name: fn() for name, fn in functions.items()}
    times: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    began = time.perf_counter()
    for round_ in range(RUNS):
        if round_ >= MIN_RUNS and time.perf_counter() - began > BUDGET_S:
            break
        for name in names if round_ % 2 == 0 else reversed(names):
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return first, times


@dataclass
class Measured:
    kernel: str
    kind: str
    samples: int
    seconds: float
    runs: list[float]
    reference: str
    reference_seconds: float
    reference_runs: dict[str, list[float]]
    agrees: bool | str

    def details(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "samples": self.samples,
            "dtype": "float64",
            "params": PARAMS[self.kernel],
            "median_s": round(self.seconds, 6),
            "runs_s": [round(t, 6) for t in self.runs],
            "reference": self.reference,
            "reference_median_s": round(self.reference_seconds, 6),
            "reference_runs_s": {
                k: [round(t, 6) for t in v] for k, v in self.reference_runs.items()
            },
            "agrees": self.agrees,
        }


def _close(a: Any, b: Any, rtol: float = 1e-9, atol: float = 1e-9) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol))


def _references(
    name: str, params: dict[str, Any], x: np.ndarray
) -> tuple[dict[str, Callable[[], Any]], Callable[[dict[str, Any], dict[str, Any]], bool | str]]:
    """The reference functions for one kernel (by display name), and a check that takes the
    kernel's outputs and each reference's result and says whether they agree."""
    if name == "ewma":
        alpha = params["alpha"]
        zi = np.array([(1 - alpha) * x[0]])  # so that y[0] = x[0], as the kernel
        lfilter = "scipy.signal.lfilter"
        return (
            {lfilter: lambda: scipy.signal.lfilter([alpha], [1, alpha - 1], x, zi=zi)},
            lambda out, ref: _close(out["y"], ref[lfilter][0]),
        )
    if name == "biquad":
        b, a = design_biquad(
            params["kind"], params["cutoff_hz"], params["sample_rate_hz"], params["q"]
        )
        sos = np.array([[*b, *a]])
        zi2, zi_sos = np.zeros(2), np.zeros((1, 2))
        return (
            {
                "scipy.signal.lfilter": lambda: scipy.signal.lfilter(b, a, x, zi=zi2),
                "scipy.signal.sosfilt": lambda: scipy.signal.sosfilt(sos, x, zi=zi_sos),
            },
            lambda out, ref: all(_close(out["y"], r[0]) for r in ref.values()),
        )
    if name == "cusum":
        target, k, h = params["target"], params["k"], params["h"]
        lindley = "numpy Lindley blocks"

        def same_alarms(out: dict[str, Any], ref: dict[str, Any]) -> bool | str:
            alarms, direction, state = ref[lindley]
            if not np.array_equal(alarms, out["alarms"]):
                return f"{alarms.size} vs {out['alarms'].size} alarms"
            return np.array_equal(direction, out["direction"]) and _close(
                state, out["state"], atol=1e-6
            )

        return {lindley: lambda: cusum_numpy(x, target, k, h)}, same_alarms
    if name == "spectrum":
        rfft = "numpy.abs(numpy.fft.rfft)"
        return (
            {rfft: lambda: np.abs(np.fft.rfft(x))},
            lambda out, ref: _close(out["magnitude"], ref[rfft], atol=1e-9 * ref[rfft].max()),
        )
    if name == "quantiles":
        q = params["q"]
        return (
            {"numpy.quantile": lambda: np.quantile(x, q)},
            lambda out, ref: _close(out["values"], ref["numpy.quantile"]),
        )
    if name == "peaks":
        distance, prominence = params["min_distance"], params["min_prominence"]
        find_peaks = "scipy.signal.find_peaks"

        def same_peaks(out: dict[str, Any], ref: dict[str, Any]) -> bool | str:
            found = ref[find_peaks][0]
            same = np.array_equal(found, out["indices"]) and _close(
                ref[find_peaks][1]["prominences"], out["prominences"]
            )
            return same or f"{found.size} vs {out['indices'].size} peaks"

        return (
            {
                find_peaks: lambda: scipy.signal.find_peaks(
                    x, distance=distance, prominence=prominence
                )
            },
            same_peaks,
        )
    return {"numpy.copy": lambda: np.copy(x)}, lambda out, ref: True  # nothing to compare


def measure(name: str, kernels: dict, signal: np.ndarray, cusum_signal: np.ndarray) -> Measured:
    kernel = kernels[name]
    params = kernel.check_params(PARAMS[name])
    x = cusum_signal if name == "cusum" else signal
    if name == "spectrum":
        x = signal[:SPECTRUM_N].copy()
    refs, check = _references(name, params, x)
    first, times = rotate({"kernel": lambda: kernel.run(x, params), **refs})
    kernel_runs = times.pop("kernel")
    outputs = first.pop("kernel")
    medians = {ref: statistics.median(t) for ref, t in times.items()}
    best = min(medians, key=medians.__getitem__)
    kind = "recurrent" if name in RECURRENT else ("other" if name in OTHER else "streaming")
    try:
        agrees = check(outputs, first)
    except Exception as exc:  # a broken comparison must not hide the figure
        agrees = f"check failed: {exc!r}"
    return Measured(
        kernel=name,
        kind=kind,
        samples=x.size,
        seconds=statistics.median(kernel_runs),
        runs=kernel_runs,
        reference=best,
        reference_seconds=medians[best],
        reference_runs=times,
        agrees=agrees,
    )


def _figure(m: Measured) -> Figure:
    label = f"{m.kernel} ({m.kind})"
    note = PARAM_NOTES.get(m.kernel)
    if note:
        label += f", {note}"
    if m.kind == "streaming":
        nbytes = m.samples * 8
        value, ref = nbytes / m.seconds / 1e9, nbytes / m.reference_seconds / 1e9
        ratio = value / ref
        return Figure(
            "kernels",
            label,
            round(value, 3),
            "GB/s",
            f">= {TARGET_STREAMING:.0%} of copy",
            ratio >= TARGET_STREAMING,
            reference=round(ref, 3),
            reference_name=m.reference,
            ratio=round(ratio, 3),
            details=m.details(),
        )
    value, ref = m.samples / m.seconds / 1e6, m.samples / m.reference_seconds / 1e6
    ratio = value / ref
    recurrent = m.kind == "recurrent"
    return Figure(
        "kernels",
        label,
        round(value, 2),
        "Msamples/s",
        f">= {TARGET_RECURRENT:g}x ref" if recurrent else "—",
        ratio >= TARGET_RECURRENT if recurrent else None,
        reference=round(ref, 2),
        reference_name=m.reference,
        ratio=round(ratio, 3),
        details=m.details(),
    )


def _pure_python(name: str, kernel_seconds: float, signal: np.ndarray) -> Figure:
    values = signal[:PYTHON_N].tolist()
    alpha = PARAMS["ewma"]["alpha"]
    fn = (lambda: rms_python(values)) if name == "rms" else (lambda: ewma_python(values, alpha))
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    python_rate = PYTHON_N / statistics.median(runs) / 1e6
    kernel_rate = N / kernel_seconds / 1e6
    return Figure(
        "kernels",
        f"{name} vs pure Python (10⁵-sample slice, scaled)",
        round(kernel_rate, 2),
        "Msamples/s",
        "—",
        None,
        reference=round(python_rate, 3),
        reference_name="pure Python loop",
        ratio=round(kernel_rate / python_rate, 1),
        details={"python_samples": PYTHON_N, "python_runs_s": [round(t, 6) for t in runs]},
    )


def run() -> list[Figure]:
    began = time.perf_counter()
    kernels = load_kernels(NUMBA_CACHE)
    warm_all(kernels, lambda done, total, name: None)
    log(f"kernels: {len(kernels)} kernels loaded in {time.perf_counter() - began:.1f} s")
    unknown = sorted(set(kernels) - set(PARAMS))
    if unknown:
        raise RuntimeError(f"no benchmark parameters for kernel(s) {', '.join(unknown)}")
    signal = signal_input(N)
    cusum_signal = cusum_input(N)
    figures: list[Figure] = []
    measured: dict[str, Measured] = {}
    for name in sorted(kernels):
        m = measure(name, kernels, signal, cusum_signal)
        measured[name] = m
        figure = _figure(m)
        figures.append(figure)
        log(
            f"kernels: {name}: {figure.value} {figure.unit} vs {figure.reference} "
            f"({m.reference}), x{figure.ratio}, agrees: {m.agrees}"
        )
    for name in ("rms", "ewma"):
        figures.append(_pure_python(name, measured[name].seconds, signal))
    return figures
