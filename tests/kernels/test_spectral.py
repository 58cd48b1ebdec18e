"""spectrum and goertzel against numpy.fft and a direct DFT sum.

Tolerances. An FFT's rounding error is absolute, of order eps·log2(n) times the signal's
scale, so small bins carry large *relative* errors; the natural yardstick is the largest
magnitude. We hold the spectrum to 1e-9 of it (measured: ~2e-15 over lengths 1-700 and
primes to 10⁵). The kernel widens float32 input to float64 exactly before any arithmetic,
so the same bound holds for float32 against numpy on the widened input; a 1e-4 bound would
only be needed against a float32 FFT (numpy 2's rfft of float32 computes in complex64).
For Goertzel the yardstick is the Cauchy–Schwarz bound |X(f)|² ≤ n·Σx²; we allow 1e-10 of
it, which also covers the reference's own error (phases up to 2π·300 rad, exp() in float64).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.signal import windows

from appliance.kernels import InputError, ParamError, load_kernels
from appliance.kernels.fft import fft

KERNELS = load_kernels(None)
DTYPES = [np.float32, np.float64]
SPECTRUM_TOL = 1e-9
GOERTZEL_TOL = 1e-10
PRIMES = [2, 3, 5, 7, 11, 13, 97, 101, 127, 251, 257, 389, 509, 521, 599]


def signals(dtype, lengths):
    elements = st.floats(-1e3, 1e3, allow_nan=False, width=32 if dtype == np.float32 else 64)
    return arrays(dtype, lengths, elements=elements)


def reference_spectrum(x, window, scale):
    x = x.astype(np.float64)
    w = windows.hann(x.size, sym=False) if window == "hann" else np.ones(x.size)
    magnitude = np.abs(np.fft.rfft(x * w))
    if scale == "amplitude":
        one_sided = np.full(magnitude.size, 2.0)
        one_sided[0] = 1.0
        if x.size % 2 == 0:
            one_sided[-1] = 1.0
        magnitude = magnitude * one_sided / w.sum()
    return magnitude


def assert_close_to_max(got, expected, tol):
    atol = tol * max(float(np.max(np.abs(expected))), np.finfo(np.float64).tiny)
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    window=st.sampled_from(["none", "hann"]),
    scale=st.sampled_from(["magnitude", "amplitude"]),
    rate=st.floats(0.01, 1e5),
)
def test_spectrum_matches_numpy_rfft(dtype, data, window, scale, rate):
    n = data.draw(st.one_of(st.integers(1, 600), st.sampled_from(PRIMES)))
    x = data.draw(signals(dtype, n))
    params = {"sample_rate_hz": rate, "window": window, "scale": scale}
    out = KERNELS["spectrum"](x, params)
    assert out["magnitude"].dtype == np.float64 and out["magnitude"].shape == (n // 2 + 1,)
    assert_close_to_max(out["magnitude"], reference_spectrum(x, window, scale), SPECTRUM_TOL)
    np.testing.assert_allclose(out["frequency_hz"], np.fft.rfftfreq(n, 1 / rate), rtol=1e-12)


@pytest.mark.parametrize("n", [1 << 12, 65537, 100_003])
def test_spectrum_long_inputs(n):
    x = np.random.default_rng(n).normal(size=n)
    got = KERNELS["spectrum"](x)["magnitude"]
    assert_close_to_max(got, np.abs(np.fft.rfft(x)), SPECTRUM_TOL)


@pytest.mark.parametrize("n", [64, 100, 101])
@pytest.mark.parametrize("window", ["none", "hann"])
def test_spectrum_amplitude_reads_a_unit_sine_as_one(n, window):
    t = np.arange(n)
    x = 0.25 + np.sin(2 * np.pi * 5 * t / n)
    out = KERNELS["spectrum"](x, {"window": window, "scale": "amplitude", "sample_rate_hz": n})
    assert out["frequency_hz"][5] == 5.0
    assert out["magnitude"][5] == pytest.approx(1.0, rel=1e-12)
    assert out["magnitude"][0] == pytest.approx(0.25, rel=1e-12)
    if window == "none":
        others = np.delete(out["magnitude"], [0, 5])
        assert np.all(others < 1e-12)


def test_spectrum_nyquist_is_not_doubled():
    x = np.array([1.0, -1.0] * 8)
    out = KERNELS["spectrum"](x, {"scale": "amplitude"})
    assert out["magnitude"][-1] == pytest.approx(1.0, rel=1e-12)
    assert out["frequency_hz"][-1] == 0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_spectrum_edges(dtype):
    spectrum = KERNELS["spectrum"]
    one = spectrum(np.array([-3.0], dtype=dtype), {"window": "hann", "scale": "amplitude"})
    assert one["frequency_hz"].tolist() == [0.0] and one["magnitude"].tolist() == [3.0]
    assert spectrum(np.zeros(7, dtype=dtype))["magnitude"].tolist() == [0.0] * 4
    with pytest.raises(InputError) as empty:
        spectrum(np.array([], dtype=dtype))
    assert empty.value.code == "bad_length"
    for bad in (np.nan, np.inf):
        with pytest.raises(InputError) as nonfinite:
            spectrum(np.array([1.0, bad, 2.0], dtype=dtype))
        assert nonfinite.value.code == "nonfinite_input"
    with pytest.raises(ParamError) as rate:
        spectrum(np.ones(4, dtype=dtype), {"sample_rate_hz": 0})
    assert rate.value.errors[0]["field"] == "params.sample_rate_hz"
    with pytest.raises(ParamError):
        spectrum(np.ones(4, dtype=dtype), {"window": "hamming"})


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_complex_fft_matches_numpy(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n) + 1j * rng.normal(size=n)
    expected = np.fft.fft(a)
    assert_close_to_max(fft(a), expected, SPECTRUM_TOL)


def reference_power(x, f, rate):
    n = np.arange(x.size)
    return float(np.abs(np.sum(x.astype(np.float64) * np.exp(-2j * np.pi * f * n / rate))) ** 2)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    rate=st.floats(0.1, 1e4),
    fraction=st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)),
)
def test_goertzel_matches_direct_dft(dtype, data, rate, fraction):
    x = data.draw(signals(dtype, st.integers(0, 600)))
    f = fraction * rate / 2
    got = KERNELS["goertzel"](x, {"frequency_hz": f, "sample_rate_hz": rate})["power"]
    bound = x.size * float(np.sum(np.square(x.astype(np.float64))))
    assert isinstance(got, float)
    assert abs(got - reference_power(x, f, rate)) <= GOERTZEL_TOL * bound


def test_goertzel_agrees_with_spectrum_on_bins():
    x = np.random.default_rng(7).normal(size=250)
    magnitude = KERNELS["spectrum"](x, {"sample_rate_hz": 250.0})["magnitude"]
    for k in (0, 1, 17, 124, 125):
        power = KERNELS["goertzel"](x, {"frequency_hz": float(k), "sample_rate_hz": 250.0})
        assert power["power"] == pytest.approx(magnitude[k] ** 2, rel=1e-9)


def test_goertzel_keeps_its_accuracy_at_dc_and_nyquist_on_long_inputs():
    # The plain Goertzel recurrence loses ~5 digits here at n = 10⁶; Reinsch's form does not.
    n = 1_000_000
    goertzel = KERNELS["goertzel"]
    assert goertzel(np.ones(n), {"frequency_hz": 0.0})["power"] == pytest.approx(n**2, rel=1e-12)
    alternating = np.tile([1.0, -1.0], n // 2)
    power = goertzel(alternating, {"frequency_hz": 0.5})["power"]
    assert power == pytest.approx(n**2, rel=1e-12)


@pytest.mark.parametrize("n", [7, 8, 9, 15, 4_099])
@pytest.mark.parametrize("fraction", [0.0, 1e-6, 0.03, 0.125, 0.25, 0.3, 0.5, 0.75, 1.0])
def test_goertzel_phases_add_up_for_any_length_and_frequency(n, fraction):
    # The kernel runs 8 interleaved recurrences at 8ω; fractions of Nyquist k/8 put 8ω on a
    # multiple of π, where its Reinsch branch flips, and n mod 8 leaves a direct tail.
    x = np.random.default_rng(n).normal(size=n)
    f = fraction * 500.0
    got = KERNELS["goertzel"](x, {"frequency_hz": f, "sample_rate_hz": 1_000.0})["power"]
    bound = x.size * float(np.sum(np.square(x)))
    assert abs(got - reference_power(x, f, 1_000.0)) <= 1e-13 * bound


@pytest.mark.parametrize("dtype", DTYPES)
def test_goertzel_edges(dtype):
    goertzel = KERNELS["goertzel"]
    assert goertzel(np.array([], dtype=dtype), {"frequency_hz": 0.1})["power"] == 0.0
    one = goertzel(np.array([-3.0], dtype=dtype), {"frequency_hz": 0.3})["power"]
    assert one == pytest.approx(9.0, rel=1e-15)
    at_nyquist = goertzel(np.ones(4, dtype=dtype), {"frequency_hz": 50.0, "sample_rate_hz": 100})
    assert at_nyquist["power"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ParamError) as above:
        goertzel(np.ones(4, dtype=dtype), {"frequency_hz": 50.5, "sample_rate_hz": 100})
    assert [e["field"] for e in above.value.errors] == ["params.frequency_hz"]
    with pytest.raises(ParamError) as missing:
        goertzel(np.ones(4, dtype=dtype), {})
    assert missing.value.errors == [{"field": "params.frequency_hz", "message": "required"}]
    with pytest.raises(ParamError):
        goertzel(np.ones(4, dtype=dtype), {"frequency_hz": -1.0})
    with pytest.raises(InputError) as nonfinite:
        goertzel(np.array([1.0, np.nan], dtype=dtype), {"frequency_hz": 0.1})
    assert nonfinite.value.code == "nonfinite_input"


@pytest.mark.parametrize("name", ["spectrum", "goertzel"])
def test_examples_run_for_every_dtype(name):
    kernel = KERNELS[name]
    kernel.warm()
    for dtype in kernel.inputs.dtypes:
        kernel(np.asarray(kernel.example["input"], dtype=dtype), kernel.example["params"])
