"""Streaming statistics against NumPy references, on edge cases and random inputs."""

import numpy as np
import pytest
import scipy.signal
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from appliance.kernels import ParamError, load_kernels

KERNELS = load_kernels(None)
DTYPES = [np.float32, np.float64]
# Relative tolerance by dtype: float32 inputs are accumulated in float64 (rms) or kept in
# float32 (ewma output), so float32 allows float32 rounding.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def finite_arrays(dtype, min_size=0, max_size=300):
    elements = st.floats(-1e3, 1e3, allow_nan=False, width=32 if dtype == np.float32 else 64)
    return arrays(dtype, st.integers(min_size, max_size), elements=elements)


def reference_rms(x):
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64))))) if x.size else np.nan


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_rms_matches_numpy(dtype, data):
    x = data.draw(finite_arrays(dtype))
    got = KERNELS["rms"](x)["rms"]
    np.testing.assert_allclose(got, reference_rms(x), rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_edges(dtype):
    rms = KERNELS["rms"]
    assert np.isnan(rms(np.array([], dtype=dtype))["rms"])
    assert rms(np.array([-2.0], dtype=dtype))["rms"] == 2.0
    assert np.isnan(rms(np.array([1.0, np.nan], dtype=dtype))["rms"])
    assert rms(np.array([1.0, np.inf], dtype=dtype))["rms"] == np.inf


def reference_ewma(x, alpha, state=None):
    out = np.empty(x.size, dtype=np.float64)
    level = state
    for i, value in enumerate(x.astype(np.float64)):
        level = value if level is None else level + alpha * (value - level)
        out[i] = level
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), alpha=st.floats(0.001, 1.0))
def test_ewma_matches_reference_and_chunks_compose(dtype, data, alpha):
    x = data.draw(finite_arrays(dtype, min_size=1))
    ewma = KERNELS["ewma"]
    whole = ewma(x, {"alpha": alpha})
    expected = reference_ewma(x, alpha)
    np.testing.assert_allclose(whole["y"], expected, rtol=RTOL[dtype], atol=1e-3)
    assert whole["y"].dtype == dtype
    cut = data.draw(st.integers(1, x.size))
    first = ewma(x[:cut], {"alpha": alpha})
    second = ewma(x[cut:], {"alpha": alpha, "state": first["state"]})
    np.testing.assert_allclose(
        np.concatenate([first["y"], second["y"]]), whole["y"], rtol=RTOL[dtype], atol=1e-3
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_ewma_edges(dtype):
    ewma = KERNELS["ewma"]
    empty = ewma(np.array([], dtype=dtype))
    assert empty["y"].size == 0 and empty["state"] is None
    assert ewma(np.array([5.0], dtype=dtype))["y"].tolist() == [5.0]
    poisoned = ewma(np.array([1.0, np.nan, 2.0], dtype=dtype), {"alpha": 0.5})["y"]
    assert poisoned[0] == 1.0 and np.isnan(poisoned[1:]).all()


EWMA_GROUP = 4096  # samples per group of blocks in the kernel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.5, 1.0])
def test_ewma_blocks_match_lfilter_on_long_inputs(dtype, alpha):
    # Several groups of blocks and a tail; alpha = 0.5 flushes its powers to 0 in a block.
    x = (np.random.default_rng(21).normal(size=5 * EWMA_GROUP + 77) + 3.0).astype(dtype)
    got = KERNELS["ewma"](x, {"alpha": alpha, "state": 2.0})
    expected = scipy.signal.lfilter(
        [alpha], [1.0, alpha - 1.0], x.astype(np.float64), zi=[(1.0 - alpha) * 2.0]
    )[0]
    np.testing.assert_allclose(got["y"], expected, rtol=RTOL[dtype], atol=1e-12)
    assert got["state"] == pytest.approx(float(expected[-1]), rel=1e-12)
    first = KERNELS["ewma"](x, {"alpha": alpha})
    assert first["y"][0] == x[0]
    np.testing.assert_allclose(first["y"], reference_ewma(x, alpha), rtol=RTOL[dtype], atol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [5, 3 * EWMA_GROUP + 100, 5 * EWMA_GROUP + 10])
def test_ewma_long_inputs_keep_nonfinite_semantics(bad, where):
    # Before the bad sample: as usual; from it on: exactly what the plain recurrence gives.
    x = np.random.default_rng(22).normal(size=5 * EWMA_GROUP + 40)
    x[where] = bad
    got = KERNELS["ewma"](x, {"alpha": 0.25})["y"]
    with np.errstate(invalid="ignore"):  # inf - inf in the reference, as in the kernel
        expected = reference_ewma(x, 0.25)
    np.testing.assert_allclose(got[:where], expected[:where], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got[where:], expected[where:])


@pytest.mark.parametrize("cut", [1, 1_000, EWMA_GROUP + 1, 2 * EWMA_GROUP + 333])
def test_ewma_long_chunks_compose(cut):
    x = np.random.default_rng(23).normal(size=4 * EWMA_GROUP + 9)
    ewma = KERNELS["ewma"]
    whole = ewma(x, {"alpha": 0.01})
    first = ewma(x[:cut], {"alpha": 0.01})
    second = ewma(x[cut:], {"alpha": 0.01, "state": first["state"]})
    chunked = np.concatenate([first["y"], second["y"]])
    if cut % EWMA_GROUP == 1:  # after y[0] = x[0], the same blocks either way: bit-for-bit
        np.testing.assert_array_equal(chunked, whole["y"])
    else:
        np.testing.assert_allclose(chunked, whole["y"], rtol=1e-12, atol=1e-13)
    assert second["state"] == pytest.approx(whole["state"], rel=1e-12)


# Moving windows ----------------------------------------------------------------------------

EPS = np.finfo(np.float64).eps
# Float32 series are computed in float64 and rounded once to float32 (half an ulp, 6e-8).
OUT_RTOL = {np.float32: 1e-6, np.float64: 0.0}


def flush_tiny(x):
    """Zero the samples below 1e-30 in magnitude: the plain float64 references lose them to
    underflow (x², x⁴, subnormal x/window) and float32 outputs would round them to
    subnormals, neither of which these tests measure. crest_factor and kurtosis scale their
    input to avoid that underflow; their edge tests show it."""
    return np.where(np.abs(x) < 1e-30, 0, x).astype(x.dtype)


def windows(x, window):
    x = x.astype(np.float64)
    if x.size < window:
        return np.empty((0, window))
    return np.lib.stride_tricks.sliding_window_view(x, window)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), window=st.integers(1, 40))
def test_sma_matches_numpy(dtype, data, window):
    x = flush_tiny(data.draw(finite_arrays(dtype)))
    y = KERNELS["sma"](x, {"window": window})["y"]
    assert y.dtype == dtype and y.size == max(x.size - window + 1, 0)
    expected = windows(x, window).mean(axis=1)
    # The running sum sees at most 2·window additions between rebuilds, each rounding by
    # eps·(a partial sum <= window·max|x|): the mean is off by at most ~2·window·eps·max|x|.
    scale = float(np.abs(x).max()) if x.size else 0.0
    atol = 4 * window * EPS * scale
    np.testing.assert_allclose(y, expected, rtol=OUT_RTOL[dtype], atol=atol)
    if x.size >= window:
        np.testing.assert_allclose(
            y,
            np.convolve(x.astype(np.float64), np.ones(window) / window, "valid"),
            rtol=OUT_RTOL[dtype] + 1e-12,
            atol=atol,
        )


def test_sma_drift_is_bounded_after_a_huge_sample_leaves():
    # Without the periodic rebuild, 1e15 leaves ~0.1 of rounding in the running sum forever.
    x = np.random.default_rng(1).normal(size=20_000)
    x[100] = 1e15
    window = 16
    y = KERNELS["sma"](x, {"window": window})["y"]
    expected = windows(x, window).mean(axis=1)
    after = 100 + 2 * window
    np.testing.assert_allclose(y[after:], expected[after:], rtol=0, atol=1e-13)
    assert y[100] == pytest.approx(1e15 / window)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sma_edges(dtype):
    sma = KERNELS["sma"]
    empty = sma(np.array([], dtype=dtype))["y"]
    assert empty.size == 0 and empty.dtype == dtype
    assert sma(np.array([3.0], dtype=dtype), {"window": 1})["y"].tolist() == [3.0]
    assert sma(np.array([3.0], dtype=dtype), {"window": 2})["y"].size == 0
    assert sma(np.arange(5, dtype=dtype), {"window": 5})["y"].tolist() == [2.0]
    x = np.array(
        [1.0, np.nan, 1.0, 1.0, np.inf, 1.0, 1.0, -np.inf, np.inf, 1.0, 1.0, 1.0], dtype=dtype
    )
    y = sma(x, {"window": 2})["y"]
    expected = np.convolve(x.astype(np.float64), [0.5, 0.5], "valid")
    np.testing.assert_array_equal(y, expected.astype(dtype))
    assert y[-1] == 1.0  # the infinities have left the window: no poisoned sum
    with pytest.raises(ParamError):
        sma(x, {"window": 0})


def long_series_with_holes(dtype, window):
    """5,003 samples of noise on an offset, with NaN and ±inf on both sides of the block
    boundaries (multiples of `window`), inside a block, and at the very end."""
    x = (100.0 + np.random.default_rng(window).normal(size=5_003)).astype(dtype)
    for index, value in (
        (2 * window - 1, np.nan),
        (2 * window, np.inf),
        (7 * window + 3, -np.inf),
        (7 * window + 5, np.inf),
        (min(20 * window + window // 2, 4_000), np.nan),
        (x.size - 1, np.inf),
    ):
        x[index] = value
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [1, 2, 7, 64, 333])
def test_sma_long_input_with_holes_matches_numpy(dtype, window):
    x = long_series_with_holes(dtype, window)
    y = KERNELS["sma"](x, {"window": window})["y"]
    with np.errstate(invalid="ignore"):
        expected = windows(x, window).sum(axis=1) / window  # inf - inf is NaN, as documented
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_allclose(y, expected.astype(dtype), rtol=OUT_RTOL[dtype] + 1e-12)


def reference_rolling_std(x, window, ddof):
    return windows(x, window).std(axis=1, ddof=ddof)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window", [1, 2, 7, 64, 333])
def test_rolling_std_long_input_with_holes_matches_numpy(dtype, window):
    x = long_series_with_holes(dtype, window)
    for ddof in (0, 1) if window > 1 else (0,):
        y = KERNELS["rolling_std"](x, {"window": window, "ddof": ddof})["y"]
        with np.errstate(invalid="ignore"):
            expected = reference_rolling_std(x, window, ddof)
        expected[~np.isfinite(windows(x, window)).all(axis=1)] = np.nan
        assert y.dtype == dtype
        np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
        # As variances, with the tolerance of test_rolling_std_matches_numpy.
        scale = float(np.nanmax(np.square(np.where(np.isfinite(x), x, np.nan), dtype=np.float64)))
        np.testing.assert_allclose(
            np.square(y.astype(np.float64)),
            np.square(expected),
            rtol=2 * OUT_RTOL[dtype] + 1e-12,
            atol=32 * EPS * scale,
        )


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), window=st.integers(2, 40), ddof=st.integers(0, 1))
def test_rolling_std_matches_numpy(dtype, data, window, ddof):
    x = flush_tiny(data.draw(finite_arrays(dtype)))
    y = KERNELS["rolling_std"](x, {"window": window, "ddof": ddof})["y"]
    assert y.dtype == dtype and y.size == max(x.size - window + 1, 0)
    expected = reference_rolling_std(x, window, ddof)
    # Compared as variances: each Welford update rounds m2 by a few eps·max(x²), and at most
    # 2·window updates separate rebuilds, so var = m2/(window - ddof) is off by about
    # 8·eps·max(x²). A std near 0 inherits the square root of that (about 1e-5 for |x| <=
    # 1e3), which is why a std-level rtol alone would be the wrong measure.
    scale = float(np.square(x.astype(np.float64)).max()) if x.size else 0.0
    np.testing.assert_allclose(
        np.square(y.astype(np.float64)),
        np.square(expected),
        rtol=2 * OUT_RTOL[dtype] + 1e-12,
        atol=32 * EPS * scale,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_rolling_std_is_stable_on_a_large_offset(dtype):
    # 1e6 + small noise: sum-of-squares formulas lose every digit here (x² ~ 1e12 against
    # a variance ~ 1e-6 in float64; float32 noise must exceed its 1/16 spacing at 1e6).
    rng = np.random.default_rng(2)
    noise = 1e-3 if dtype == np.float64 else 1.0
    x = (1e6 + rng.normal(scale=noise, size=5_000)).astype(dtype)
    for ddof in (0, 1):
        y = KERNELS["rolling_std"](x, {"window": 50, "ddof": ddof})["y"]
        expected = reference_rolling_std(x, 50, ddof)
        np.testing.assert_allclose(y, expected, rtol=1e-6)
        assert 0.5 * noise < y.mean() < 1.5 * noise


def test_rolling_std_drift_is_bounded_after_a_huge_sample_leaves():
    x = np.random.default_rng(3).normal(size=20_000)
    x[100] = 1e8  # leaves ~1 of rounding in m2 without the periodic rebuild
    window = 16
    y = KERNELS["rolling_std"](x, {"window": window, "ddof": 1})["y"]
    expected = reference_rolling_std(x, window, 1)
    after = 100 + 2 * window
    np.testing.assert_allclose(y[after:], expected[after:], rtol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rolling_std_edges(dtype):
    rolling_std = KERNELS["rolling_std"]
    empty = rolling_std(np.array([], dtype=dtype))["y"]
    assert empty.size == 0 and empty.dtype == dtype
    assert rolling_std(np.array([7.0], dtype=dtype), {"window": 1})["y"].tolist() == [0.0]
    assert rolling_std(np.array([7.0], dtype=dtype), {"window": 2})["y"].size == 0
    assert rolling_std(np.array([1.0, 3.0], dtype=dtype), {"window": 2, "ddof": 1})[
        "y"
    ].tolist() == [pytest.approx(np.sqrt(2.0))]
    assert rolling_std(np.full(100, 0.1, dtype=dtype), {"window": 10})["y"].max() < 1e-9
    x = np.array([1.0, 2.0, np.nan, 2.0, 1.0, np.inf, 1.0, 2.0, 1.0, 2.0], dtype=dtype)
    y = rolling_std(x, {"window": 2})["y"]
    np.testing.assert_array_equal(np.isnan(y), [0, 1, 1, 0, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(y[~np.isnan(y)], 0.5)
    with pytest.raises(ParamError) as caught:
        rolling_std(x, {"window": 1, "ddof": 1})
    assert caught.value.errors[0]["field"] == "params.ddof"


# Whole-window shape statistics ----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_peak_to_peak_matches_numpy(dtype, data):
    x = data.draw(finite_arrays(dtype, min_size=1))
    got = KERNELS["peak_to_peak"](x)["peak_to_peak"]
    assert isinstance(got, float)
    assert got == float(np.ptp(x.astype(np.float64)))  # max and min are exact


@pytest.mark.parametrize("dtype", DTYPES)
def test_peak_to_peak_edges(dtype):
    ptp = KERNELS["peak_to_peak"]
    assert np.isnan(ptp(np.array([], dtype=dtype))["peak_to_peak"])
    assert ptp(np.array([-3.0], dtype=dtype))["peak_to_peak"] == 0.0
    assert np.isnan(ptp(np.array([1.0, np.nan, 2.0], dtype=dtype))["peak_to_peak"])
    assert ptp(np.array([1.0, np.inf], dtype=dtype))["peak_to_peak"] == np.inf
    assert ptp(np.array([-np.inf, np.inf], dtype=dtype))["peak_to_peak"] == np.inf
    assert np.isnan(ptp(np.array([np.inf, np.inf], dtype=dtype))["peak_to_peak"])
    if dtype == np.float32:  # float64 arithmetic: no overflow where float32 would give inf
        big = np.finfo(np.float32).max
        assert ptp(np.array([-big, big], dtype=dtype))["peak_to_peak"] == 2 * float(big)


def reference_crest_factor(x):
    x = x.astype(np.float64)
    return float(np.abs(x).max() / np.sqrt(np.mean(np.square(x))))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_crest_factor_matches_numpy(dtype, data):
    x = flush_tiny(data.draw(finite_arrays(dtype, min_size=1)))
    got = KERNELS["crest_factor"](x)["crest_factor"]
    if not x.any():
        assert np.isnan(got)
        return
    np.testing.assert_allclose(got, reference_crest_factor(x), rtol=1e-12)
    assert 1.0 - 1e-12 <= got <= np.sqrt(x.size) * (1 + 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_crest_factor_edges(dtype):
    crest = KERNELS["crest_factor"]
    assert np.isnan(crest(np.array([], dtype=dtype))["crest_factor"])
    assert np.isnan(crest(np.zeros(5, dtype=dtype))["crest_factor"])
    assert crest(np.array([-2.0], dtype=dtype))["crest_factor"] == 1.0
    assert crest(np.array([0.0, 0.0, 0.0, 4.0], dtype=dtype))["crest_factor"] == 2.0
    sine = np.sin(2 * np.pi * np.arange(1000) / 100).astype(dtype)
    assert crest(sine)["crest_factor"] == pytest.approx(np.sqrt(2), rel=1e-6)
    assert np.isnan(crest(np.array([1.0, np.nan], dtype=dtype))["crest_factor"])
    assert np.isnan(crest(np.array([1.0, np.inf], dtype=dtype))["crest_factor"])
    tiny, huge = np.array([1e-40, 0.0]), np.array([1e200, 0.0])  # x² under/overflows
    if dtype == np.float64:
        assert crest(tiny)["crest_factor"] == pytest.approx(np.sqrt(2), rel=1e-15)
        assert crest(huge)["crest_factor"] == pytest.approx(np.sqrt(2), rel=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), fisher=st.booleans())
def test_kurtosis_matches_scipy(dtype, data, fisher):
    x = flush_tiny(data.draw(finite_arrays(dtype, min_size=2)))
    x64 = x.astype(np.float64)
    # Rounding in m2 is relative to mean², so the ratio is only well conditioned while the
    # variance is not lost in the offset; the large-offset test covers the rest.
    assume(x64.var() > 1e-6 * np.mean(x64) ** 2)
    got = KERNELS["kurtosis"](x, {"fisher": fisher})["kurtosis"]
    expected = float(scipy.stats.kurtosis(x64, fisher=fisher, bias=True))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert got >= (-2.0 if fisher else 1.0) - 1e-9


def test_kurtosis_is_stable_on_a_large_offset():
    # Kurtosis ignores shifts, and x - 1e6 is exact here, so scipy on the shifted data is
    # an accurate reference for the unshifted data.
    noise = np.random.default_rng(4).standard_t(5, size=4_000) * 1e-3
    x = 1e6 + noise
    got = KERNELS["kurtosis"](x)["kurtosis"]
    assert got == pytest.approx(scipy.stats.kurtosis(x - 1e6), rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kurtosis_long_input_matches_scipy(dtype):
    # 10,007 samples: the four-way partial sums and their remainder loop.
    x = np.random.default_rng(5).standard_t(5, size=10_007).astype(dtype)
    expected = float(scipy.stats.kurtosis(x.astype(np.float64)))
    assert KERNELS["kurtosis"](x)["kurtosis"] == pytest.approx(expected, rel=1e-9)
    for index in (0, 5_000, x.size - 1):  # a non-finite sample anywhere: NaN
        for bad in (np.nan, np.inf, -np.inf):
            holed = x.copy()
            holed[index] = bad
            assert np.isnan(KERNELS["kurtosis"](holed)["kurtosis"])


def test_kurtosis_when_the_plain_sum_overflows():
    # sum(x) overflows float64 before scaling: the careful pass scales each sample first.
    x = np.random.default_rng(6).uniform(1.0, 2.0, size=1_001) * 1e306
    got = KERNELS["kurtosis"](x)["kurtosis"]
    assert got == pytest.approx(scipy.stats.kurtosis(x / 1e306), rel=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kurtosis_edges(dtype):
    kurtosis = KERNELS["kurtosis"]
    assert np.isnan(kurtosis(np.array([], dtype=dtype))["kurtosis"])
    assert np.isnan(kurtosis(np.array([1.0], dtype=dtype))["kurtosis"])
    assert kurtosis(np.array([1.0, 3.0], dtype=dtype))["kurtosis"] == -2.0
    assert kurtosis(np.array([1.0, 3.0], dtype=dtype), {"fisher": False})["kurtosis"] == 1.0
    assert np.isnan(kurtosis(np.full(10, 0.1, dtype=dtype))["kurtosis"])  # zero variance
    assert np.isnan(kurtosis(np.array([1.0, np.nan, 2.0], dtype=dtype))["kurtosis"])
    assert np.isnan(kurtosis(np.array([1.0, np.inf, 2.0], dtype=dtype))["kurtosis"])
    uniform = np.linspace(-1.0, 1.0, 10_001, dtype=dtype)
    assert kurtosis(uniform)["kurtosis"] == pytest.approx(-1.2, abs=1e-3)
    if dtype == np.float64:  # x⁴ would overflow without scaling
        big = np.array([1e100, -1e100, 3e100, 0.0])
        assert kurtosis(big)["kurtosis"] == pytest.approx(scipy.stats.kurtosis(big / 1e100))
    with pytest.raises(ParamError):
        kurtosis(uniform, {"fisher": 1})
