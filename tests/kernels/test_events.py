"""zscore_flags, cusum and peaks against numpy, a textbook loop and scipy.signal.find_peaks.

Tolerances. Every kernel here widens float32 to float64 exactly before any arithmetic, so
both dtypes are compared with float64 references. zscore's mean and std may differ from
numpy's (pairwise summation) by rounding only: 1e-12 of the window's largest |x|. CUSUM
evaluates the textbook expressions in the same order as the reference, so alarms and state
must be identical. Peak indices must be identical to scipy's; prominences are differences
of two samples, exact in float64, so 1e-12 (float64) or one float32 rounding (float32).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.signal import find_peaks

from appliance.kernels import InputError, ParamError, load_kernels

KERNELS = load_kernels(None)
DTYPES = [np.float32, np.float64]
PROMINENCE_RTOL = {np.float32: 2e-7, np.float64: 1e-12}


def finite_arrays(dtype, min_size=0, max_size=300):
    elements = st.floats(-1e3, 1e3, allow_nan=False, width=32 if dtype == np.float32 else 64)
    return arrays(dtype, st.integers(min_size, max_size), elements=elements)


# --- zscore_flags ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=80, deadline=None)
@given(data=st.data(), threshold=st.floats(0.01, 5.0))
def test_zscore_matches_numpy(dtype, data, threshold):
    x = data.draw(finite_arrays(dtype, min_size=1))
    holes = data.draw(arrays(np.bool_, x.size))
    x[holes & (np.arange(x.size) % 3 == 0)] = np.nan
    x[holes & (np.arange(x.size) % 3 == 1)] = np.inf
    out = KERNELS["zscore_flags"](x, {"threshold": threshold})
    valid = x[np.isfinite(x)].astype(np.float64)
    if valid.size == 0:
        assert np.isnan(out["mean"]) and np.isnan(out["std"]) and out["count"] == 0
        assert not out["flags"].any()
        return
    scale = float(np.max(np.abs(valid)))
    np.testing.assert_allclose(out["mean"], valid.mean(), rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(out["std"], valid.std(), rtol=0, atol=1e-12 * scale)
    # The flagging rule, checked with the kernel's own mean and std (so that a tie with the
    # threshold is decided by the same numbers on both sides).
    wide = x.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs(wide - out["mean"]) / out["std"]
    expected = np.isfinite(wide) & (z > threshold) if out["std"] > 0 else np.zeros(x.size, bool)
    assert out["flags"].dtype == np.uint8
    np.testing.assert_array_equal(out["flags"], expected.astype(np.uint8))
    assert out["count"] == int(expected.sum())


@pytest.mark.parametrize("dtype", DTYPES)
def test_zscore_edges(dtype):
    zscore = KERNELS["zscore_flags"]
    empty = zscore(np.array([], dtype=dtype))
    assert empty["flags"].size == 0 and empty["count"] == 0
    assert np.isnan(empty["mean"]) and np.isnan(empty["std"])
    one = zscore(np.array([4.0], dtype=dtype))
    assert one["flags"].tolist() == [0] and (one["mean"], one["std"]) == (4.0, 0.0)
    flat = zscore(np.full(9, 0.1, dtype=dtype), {"threshold": 0.01})  # std exactly 0
    assert flat["std"] == 0.0 and flat["count"] == 0
    spike = zscore(np.array([0.0] * 9 + [10.0], dtype=dtype), {"threshold": 2.0})
    assert spike["flags"].tolist() == [0] * 9 + [1] and spike["count"] == 1
    assert spike["mean"] == pytest.approx(1.0) and spike["std"] == pytest.approx(3.0)
    exactly = zscore(np.array([0.0] * 9 + [10.0], dtype=dtype), {"threshold": 3.0})
    assert exactly["count"] == 0  # z = 3 does not exceed 3
    holes = zscore(
        np.array([np.nan, 0.0, np.inf, 0.0, 10.0, -np.inf], dtype=dtype), {"threshold": 1.0}
    )
    assert holes["flags"].tolist() == [0, 0, 0, 0, 1, 0]
    assert holes["mean"] == pytest.approx(10 / 3)
    only_nan = zscore(np.array([np.nan, np.nan], dtype=dtype))
    assert only_nan["count"] == 0 and np.isnan(only_nan["mean"])
    with pytest.raises(ParamError):
        zscore(np.ones(3, dtype=dtype), {"threshold": 0})


@pytest.mark.parametrize("dtype", DTYPES)
def test_zscore_long_input_with_holes_matches_numpy(dtype):
    # 10,007 samples (the four-way partial sums and their remainder), holes at the start,
    # in the middle and at the end, and samples placed exactly at and next to the threshold.
    rng = np.random.default_rng(7)
    x = (5.0 + rng.standard_normal(10_007)).astype(dtype)
    x[[0, 4_000, 4_001, x.size - 1]] = [np.nan, np.inf, -np.inf, np.nan]
    first = KERNELS["zscore_flags"](x, {"threshold": 2.5})
    mean, std = first["mean"], first["std"]
    for k, z in enumerate((2.5, -2.5, 2.5 + 1e-15, 2.5 - 1e-15)):
        x[10 + k] = mean + z * std  # moves the mean and std a little; the check uses the new ones
    out = KERNELS["zscore_flags"](x, {"threshold": 2.5})
    valid = x[np.isfinite(x)].astype(np.float64)
    np.testing.assert_allclose(out["mean"], valid.mean(), rtol=0, atol=1e-12 * np.abs(valid).max())
    np.testing.assert_allclose(out["std"], valid.std(), rtol=0, atol=1e-12 * np.abs(valid).max())
    wide = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        expected = np.isfinite(wide) & (np.abs(wide - out["mean"]) / out["std"] > 2.5)
    np.testing.assert_array_equal(out["flags"], expected.astype(np.uint8))
    assert out["count"] == int(expected.sum()) >= 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ["offset", "step", "constant"])
def test_zscore_one_pass_on_long_inputs_matches_numpy(dtype, shape):
    # Past 65,536 samples the moments come from one pass about the mean of the first
    # 65,536: an offset, a step away from that first stretch, and a constant input (std
    # exactly 0) must all still agree with numpy's two-pass figures.
    rng = np.random.default_rng(8)
    n = 200_003
    if shape == "offset":
        x = 1e4 + 1e-2 * rng.standard_normal(n)
    elif shape == "step":
        x = np.where(np.arange(n) < 70_000, 0.0, 1e3) + rng.standard_normal(n)
    else:
        x = np.full(n, 0.1)
    x = x.astype(dtype)
    x[[3, 65_535, 65_536, 150_000]] = [np.nan, np.inf, -np.inf, np.nan]
    out = KERNELS["zscore_flags"](x, {"threshold": 2.0})
    valid = x[np.isfinite(x)].astype(np.float64)
    scale = float(np.abs(valid).max())
    np.testing.assert_allclose(out["mean"], valid.mean(), rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(out["std"], valid.std(), rtol=0, atol=1e-12 * scale)
    if shape == "constant":
        assert out["std"] == 0.0 and out["count"] == 0
        return
    wide = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        expected = np.isfinite(wide) & (np.abs(wide - out["mean"]) / out["std"] > 2.0)
    np.testing.assert_array_equal(out["flags"], expected.astype(np.uint8))


@pytest.mark.parametrize("scale", [1e-150, 1e150])
def test_zscore_without_a_safe_comparison_band_divides(scale):
    # threshold·std near under- or overflow: every sample is decided by the division itself.
    x = np.array([0.0] * 9 + [10.0]) * scale
    for threshold in (2.0, 3.0, 0.3, 1e-145, 1e145, 1e-160):
        out = KERNELS["zscore_flags"](x, {"threshold": threshold})
        z = np.abs(x - out["mean"]) / out["std"]
        np.testing.assert_array_equal(out["flags"], (z > threshold).astype(np.uint8))


# --- cusum ----------------------------------------------------------------------------------


def reference_cusum(x, target, k, h, state=(0.0, 0.0)):
    """Page's two-sided CUSUM, as in Montgomery's Introduction to Statistical Quality
    Control (tabular form, reset to zero after a signal)."""
    s_pos, s_neg = state
    alarms, direction = [], []
    for i, value in enumerate(x.astype(np.float64).tolist()):
        s_pos = max(0.0, s_pos + value - target - k)
        s_neg = max(0.0, s_neg + target - value - k)
        if s_pos > h:
            alarms.append(i)
            direction.append(1)
            s_pos = 0.0
        if s_neg > h:
            alarms.append(i)
            direction.append(-1)
            s_neg = 0.0
    return alarms, direction, [s_pos, s_neg]


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    target=st.floats(-5, 5),
    k=st.floats(0, 3),
    h=st.floats(0.01, 20),
    state=st.tuples(st.floats(0, 30), st.floats(0, 30)),
)
def test_cusum_matches_textbook_and_chunks_compose(dtype, data, target, k, h, state):
    elements = st.floats(-10, 10, width=32 if dtype == np.float32 else 64)
    x = data.draw(arrays(dtype, st.integers(0, 300), elements=elements))
    cusum = KERNELS["cusum"]
    params = {"target": target, "k": k, "h": h}
    whole = cusum(x, {**params, "state": list(state)})
    alarms, direction, final = reference_cusum(x, target, k, h, state)
    assert whole["alarms"].dtype == np.int64 and whole["direction"].dtype == np.int8
    assert whole["alarms"].tolist() == alarms
    assert whole["direction"].tolist() == direction
    assert whole["state"] == final
    cuts = sorted(data.draw(st.lists(st.integers(0, x.size), max_size=3)))
    carried, got_alarms, got_direction = list(state), [], []
    for start, end in zip([0, *cuts], [*cuts, x.size], strict=True):
        part = cusum(x[start:end], {**params, "state": carried})
        got_alarms += (part["alarms"] + start).tolist()
        got_direction += part["direction"].tolist()
        carried = part["state"]
    assert (got_alarms, got_direction, carried) == (alarms, direction, final)


def test_cusum_detects_a_step_both_ways():
    x = np.concatenate([np.zeros(20), np.full(20, 2.0), np.zeros(20), np.full(20, -2.0)])
    out = KERNELS["cusum"](x, {"k": 0.5, "h": 4.0})
    # Each side gains 1.5 per sample after a step of 2: 1.5, 3.0, 4.5 > 4 on the third.
    assert out["alarms"][:2].tolist() == [22, 25]
    assert set(out["direction"][out["alarms"] < 40].tolist()) == {1}
    assert out["direction"][out["alarms"] >= 60].tolist()[0] == -1
    assert out["alarms"][out["alarms"] >= 60][0] == 62


def test_cusum_many_alarms_grow_the_buffer():
    out = KERNELS["cusum"](np.full(1000, 10.0), {"k": 0.0, "h": 5.0})
    assert out["alarms"].tolist() == list(range(1000))
    assert out["direction"].tolist() == [1] * 1000 and out["state"] == [0.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cusum_edges(dtype):
    cusum = KERNELS["cusum"]
    empty = cusum(np.array([], dtype=dtype), {"state": [1.0, 2.0]})
    assert empty["alarms"].size == 0 and empty["direction"].size == 0
    assert empty["state"] == [1.0, 2.0]
    one = cusum(np.array([6.0], dtype=dtype))
    assert one["alarms"].tolist() == [0] and one["direction"].tolist() == [1]
    assert one["state"] == [0.0, 0.0]
    both = cusum(np.array([0.0], dtype=dtype), {"k": 0.0, "h": 1.0, "state": [3.0, 3.0]})
    assert both["alarms"].tolist() == [0, 0] and both["direction"].tolist() == [1, -1]
    for bad in ({"state": [-1.0, 0.0]}, {"state": [0.0]}, {"h": 0}, {"k": -0.1}):
        with pytest.raises(ParamError) as error:
            cusum(np.ones(3, dtype=dtype), bad)
        assert error.value.errors[0]["field"] == f"params.{next(iter(bad))}"
    with pytest.raises(InputError) as nonfinite:
        cusum(np.array([0.0, np.nan], dtype=dtype))
    assert nonfinite.value.code == "nonfinite_input"


# --- peaks ----------------------------------------------------------------------------------


def scipy_peaks(x, distance, prominence, height):
    peaks, properties = find_peaks(x, height=height, distance=distance, prominence=prominence)
    return peaks, properties["prominences"]


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 400),
    shape=st.sampled_from(["noise", "walk"]),
    distance=st.integers(1, 30),
    prominence=st.floats(0, 3),
    height=st.one_of(st.none(), st.floats(-2, 2)),
)
def test_peaks_match_scipy(dtype, seed, n, shape, distance, prominence, height):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x = (np.cumsum(x) / 4 if shape == "walk" else x).astype(dtype)
    params = {"min_distance": distance, "min_prominence": prominence}
    if height is not None:
        params["min_height"] = height
    out = KERNELS["peaks"](x, params)
    expected, prominences = scipy_peaks(x, distance, prominence, height)
    assert out["indices"].dtype == np.int64 and out["prominences"].dtype == dtype
    np.testing.assert_array_equal(out["indices"], expected)
    np.testing.assert_allclose(out["prominences"], prominences, rtol=PROMINENCE_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    prominence=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    height=st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.0])),
)
def test_peaks_with_plateaus_match_scipy(dtype, data, prominence, height):
    # Few distinct values: many plateaus and ties. min_distance stays 1 here, because with
    # ties scipy's choice depends on its (unstable) sort; see the tie test below.
    values = st.integers(0, 3).map(float)
    x = data.draw(arrays(dtype, st.integers(0, 200), elements=values))
    params = {"min_prominence": prominence}
    if height is not None:
        params["min_height"] = height
    out = KERNELS["peaks"](x, params)
    expected, prominences = scipy_peaks(x, None, prominence, height)
    np.testing.assert_array_equal(out["indices"], expected)
    np.testing.assert_array_equal(out["prominences"], prominences)


def test_peaks_on_a_rising_sawtooth_match_scipy():
    # scipy's outward walk is quadratic on this shape; the kernel's stack passes are linear.
    x = np.tile([0.0, 1.0, 0.5], 3000) + np.repeat(np.arange(3000.0), 3)
    out = KERNELS["peaks"](x, {"min_prominence": 0.1})
    expected, prominences = scipy_peaks(x, None, 0.1, None)
    np.testing.assert_array_equal(out["indices"], expected)
    np.testing.assert_allclose(out["prominences"], prominences, rtol=1e-12)


def test_peaks_plateaus_and_ties():
    peaks = KERNELS["peaks"]
    plateau = np.array([0.0, 1.0, 3.0, 3.0, 3.0, 3.0, 1.0, 0.0])
    assert peaks(plateau)["indices"].tolist() == [3]  # (2 + 5) // 2, like scipy
    edge_plateau = np.array([0.0, 2.0, 2.0])  # runs into the end: not a peak
    assert peaks(edge_plateau)["indices"].size == 0
    tie = np.array([0.0, 1.0, 0.0, 1.0, 0.0])  # equal heights closer than min_distance
    assert peaks(tie, {"min_distance": 3})["indices"].tolist() == [3]  # the later one
    assert scipy_peaks(tie, 3, 0.0, None)[0].tolist() == [3]
    higher_left = np.array([0.0, 2.0, 0.0, 1.0, 0.0])
    assert peaks(higher_left, {"min_distance": 3})["indices"].tolist() == [1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_peaks_edges(dtype):
    peaks = KERNELS["peaks"]
    for x in ([], [1.0], [0.0, 1.0], [1.0, 0.0, 1.0]):
        out = peaks(np.array(x, dtype=dtype))
        assert out["indices"].size == 0 and out["prominences"].size == 0
    out = peaks(np.array([0.0, 1.0, 0.0], dtype=dtype), {"min_height": 1.0})
    assert out["indices"].tolist() == [1] and out["prominences"].tolist() == [1.0]
    assert peaks(np.array([0.0, 1.0, 0.0], dtype=dtype), {"min_height": 1.5})["indices"].size == 0
    for bad in (np.nan, np.inf):
        with pytest.raises(InputError) as nonfinite:
            peaks(np.array([0.0, bad, 0.0], dtype=dtype))
        assert nonfinite.value.code == "nonfinite_input"
    for params in ({"min_distance": 0}, {"min_distance": 1.5}, {"min_prominence": -1}):
        with pytest.raises(ParamError):
            peaks(np.ones(3, dtype=dtype), params)


@pytest.mark.parametrize("name", ["zscore_flags", "cusum", "peaks"])
def test_examples_run_for_every_dtype(name):
    kernel = KERNELS[name]
    kernel.warm()
    for dtype in kernel.inputs.dtypes:
        kernel(np.asarray(kernel.example["input"], dtype=dtype), kernel.example["params"])
