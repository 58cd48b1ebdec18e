"""lttb, histogram and quantiles against textbook LTTB, numpy.histogram and numpy.nanquantile.

Tolerances. The kernels widen float32 to float64 exactly before any arithmetic and repeat
the reference's float64 operations in the same order, so results are compared exactly:
LTTB's chosen indices, histogram counts and edges (numpy's own index arithmetic), and
quantiles (numpy's lerp) — a rounding difference would show up as a wrong bin or point.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from appliance.kernels import InputError, ParamError, load_kernels

KERNELS = load_kernels(None)
DTYPES = [np.float32, np.float64]


def values(dtype, nan=False):
    width = 32 if dtype == np.float32 else 64
    # Small integers hit bin edges and ties exactly; wide floats exercise the rest.
    return st.one_of(
        st.integers(-5, 5).map(float),
        st.floats(-1e3, 1e3, allow_nan=False, width=width),
        *([st.just(math.nan)] if nan else []),
    )


# --- lttb -----------------------------------------------------------------------------------


def reference_lttb(data, threshold):
    """Sveinn Steinarsson's LTTB (the JavaScript reference implementation), line by line."""
    data_length = len(data)
    if threshold >= data_length or threshold == 0:
        return data
    sampled = []
    every = (data_length - 2) / (threshold - 2)
    a = 0
    sampled.append(data[a])
    for i in range(threshold - 2):
        avg_x = avg_y = 0.0
        avg_range_start = math.floor((i + 1) * every) + 1
        avg_range_end = math.floor((i + 2) * every) + 1
        avg_range_end = avg_range_end if avg_range_end < data_length else data_length
        avg_range_length = avg_range_end - avg_range_start
        while avg_range_start < avg_range_end:
            avg_x += data[avg_range_start][0]
            avg_y += data[avg_range_start][1]
            avg_range_start += 1
        avg_x /= avg_range_length
        avg_y /= avg_range_length
        range_offs = math.floor(i * every) + 1
        range_to = math.floor((i + 1) * every) + 1
        point_a_x, point_a_y = data[a]
        max_area = -1.0
        while range_offs < range_to:
            area = (
                abs(
                    (point_a_x - avg_x) * (data[range_offs][1] - point_a_y)
                    - (point_a_x - data[range_offs][0]) * (avg_y - point_a_y)
                )
                * 0.5
            )
            if area > max_area:
                max_area = area
                max_area_point = data[range_offs]
                next_a = range_offs
            range_offs += 1
        sampled.append(max_area_point)
        a = next_a
    sampled.append(data[data_length - 1])
    return sampled


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=50, deadline=None)
@given(data=st.data(), threshold=st.integers(3, 60))
def test_lttb_matches_textbook(dtype, data, threshold):
    x = data.draw(arrays(dtype, st.integers(0, 400), elements=values(dtype)))
    out = KERNELS["lttb"](x, {"threshold": threshold})
    points = [(float(i), float(v)) for i, v in enumerate(x.astype(np.float64))]
    expected = reference_lttb(points, threshold)
    assert out["indices"].dtype == np.int64 and out["values"].dtype == dtype
    assert out["indices"].tolist() == [int(i) for i, _ in expected]
    assert out["values"].astype(np.float64).tolist() == [v for _, v in expected]
    if x.size:
        assert out["indices"][0] == 0 and out["indices"][-1] == x.size - 1
        assert np.all(np.diff(out["indices"]) > 0)
        assert out["indices"].size == min(x.size, threshold)


def test_lttb_keeps_the_extremes_of_a_spiky_signal():
    x = np.zeros(1000)
    x[[137, 512, 888]] = [5.0, -7.0, 3.0]
    assert {137, 512, 888} <= set(KERNELS["lttb"](x, {"threshold": 20})["indices"].tolist())


@pytest.mark.parametrize("dtype", DTYPES)
def test_lttb_edges(dtype):
    lttb = KERNELS["lttb"]
    empty = lttb(np.array([], dtype=dtype))
    assert empty["indices"].size == 0 and empty["values"].size == 0
    one = lttb(np.array([2.5], dtype=dtype), {"threshold": 3})
    assert one["indices"].tolist() == [0] and one["values"].tolist() == [2.5]
    same = lttb(np.arange(5, dtype=dtype), {"threshold": 5})
    assert same["indices"].tolist() == [0, 1, 2, 3, 4]
    assert same["values"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    three = lttb(np.array([0.0, 1.0, 9.0, 1.0, 0.0], dtype=dtype), {"threshold": 3})
    assert three["indices"].tolist() == [0, 2, 4]
    with pytest.raises(ParamError):
        lttb(np.ones(5, dtype=dtype), {"threshold": 2})
    with pytest.raises(InputError) as nonfinite:
        lttb(np.array([0.0, np.nan, 1.0, 2.0], dtype=dtype), {"threshold": 3})
    assert nonfinite.value.code == "nonfinite_input"


# --- histogram ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    bins=st.integers(1, 40),
    chosen=st.one_of(
        st.none(),
        st.tuples(st.integers(-6, 6), st.integers(1, 12)).map(lambda r: [r[0], r[0] + r[1]]),
        st.tuples(st.floats(-1e3, 1e3), st.floats(1e-3, 1e3)).map(lambda r: [r[0], r[0] + r[1]]),
    ),
)
def test_histogram_matches_numpy(dtype, data, bins, chosen):
    x = data.draw(arrays(dtype, st.integers(0, 300), elements=values(dtype, nan=True)))
    if chosen is not None and data.draw(st.booleans()):
        x[: x.size // 4] = np.inf  # only binned against an explicit range, as in numpy
    params = {"bins": bins} if chosen is None else {"bins": bins, "range": chosen}
    out = KERNELS["histogram"](x, params)
    wide = x.astype(np.float64)
    counts, edges = np.histogram(wide[~np.isnan(wide)], bins, range=chosen)
    assert out["counts"].dtype == np.int64 and out["edges"].dtype == np.float64
    np.testing.assert_array_equal(out["counts"], counts)
    np.testing.assert_array_equal(out["edges"], edges)
    assert out["nan_count"] == int(np.isnan(x).sum())
    assert out["nan_count"] + out["outside_count"] + int(out["counts"].sum()) == x.size


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_histogram_auto_range_is_the_span_of_the_finite_samples(dtype, data):
    # Without ±inf the range comes from a branch-free min/max; with either, from the loop
    # that skips them: both must give the finite span.
    special = st.sampled_from([math.nan, math.inf, -math.inf])
    elements = st.one_of(values(dtype), special) if data.draw(st.booleans()) else values(dtype)
    x = data.draw(arrays(dtype, st.integers(0, 40), elements=elements))
    edges = KERNELS["histogram"](x, {"bins": 1})["edges"].tolist()
    finite = x[np.isfinite(x)].astype(np.float64)
    if finite.size == 0:
        assert edges == [0.0, 1.0]
    elif finite.min() == finite.max():
        assert edges == [finite.min() - 0.5, finite.max() + 0.5]
    else:
        assert edges == [finite.min(), finite.max()]


@pytest.mark.parametrize("dtype", DTYPES)
def test_histogram_edges(dtype):
    histogram = KERNELS["histogram"]
    empty = histogram(np.array([], dtype=dtype), {"bins": 2})
    assert empty["counts"].tolist() == [0, 0] and empty["edges"].tolist() == [0.0, 0.5, 1.0]
    only_nan = histogram(np.array([np.nan, np.nan], dtype=dtype), {"bins": 2})
    assert only_nan["counts"].tolist() == [0, 0] and only_nan["nan_count"] == 2
    one = histogram(np.array([3.0], dtype=dtype), {"bins": 2})
    assert one["counts"].tolist() == [0, 1] and one["edges"].tolist() == [2.5, 3.0, 3.5]
    closed = histogram(np.array([0.0, 1.0, 2.0, 2.0], dtype=dtype), {"bins": 2})
    assert closed["counts"].tolist() == [1, 3]  # 1.0 opens the last bin, 2.0 closes it
    mixed = histogram(np.array([np.nan, -np.inf, 1.0, 5.0, np.inf, 2.0], dtype=dtype), {"bins": 1})
    assert mixed["edges"].tolist() == [1.0, 5.0]  # ±inf does not stretch the range
    assert (mixed["counts"].tolist(), mixed["nan_count"], mixed["outside_count"]) == ([3], 1, 2)
    ranged = histogram(
        np.array([-1.0, 0.0, 0.5, 1.0, 9.0], dtype=dtype), {"bins": 2, "range": [0, 1]}
    )
    assert ranged["counts"].tolist() == [1, 2] and ranged["outside_count"] == 2
    for bad in ({"range": [1, 1]}, {"range": [2, 1]}, {"range": [-1e308, 1e308]}):
        with pytest.raises(ParamError) as error:
            histogram(np.ones(3, dtype=dtype), bad)
        assert error.value.errors[0]["field"] == "params.range"
    for bad in ({"bins": 0}, {"bins": 4097}, {"range": [0]}):
        with pytest.raises(ParamError):
            histogram(np.ones(3, dtype=dtype), bad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bins", [1, 7, 100, 4096])
def test_histogram_long_input_on_and_beside_edges_matches_numpy(dtype, bins):
    # Every edge, its neighbours one ulp away, noise, and holes in the middle: the scaled
    # estimate, the values near an edge that are checked against it, and NaN/inf counting.
    rng = np.random.default_rng(bins)
    edges = np.linspace(-3.0, 5.0, bins + 1)
    x = np.concatenate(
        [
            edges,
            np.nextafter(edges, -np.inf),
            np.nextafter(edges, np.inf),
            rng.uniform(-3.0, 5.0, 10_000),
            [np.nan, np.inf, -np.inf, np.nan],
        ]
    ).astype(dtype)
    rng.shuffle(x)
    for chosen in (None, [-3.0, 5.0], [-1.0, 1.0]):
        params = {"bins": bins} if chosen is None else {"bins": bins, "range": chosen}
        out = KERNELS["histogram"](x, params)
        wide = x.astype(np.float64)
        finite = wide[np.isfinite(wide)]
        counts, numpy_edges = np.histogram(
            wide[~np.isnan(wide)] if chosen else finite, bins, range=chosen
        )
        np.testing.assert_array_equal(out["edges"], numpy_edges)
        np.testing.assert_array_equal(out["counts"], counts)
        assert out["nan_count"] == 2


def test_histogram_with_edges_at_the_rounding_limit_repeats_numpy():
    # A span of a few ulps of the values: the edges are rounded by up to a bin, so numpy's
    # own arithmetic (not the scaled shortcut) decides, and must be repeated exactly.
    base = 1e6
    x = base + np.arange(-50, 51) * np.spacing(base)
    for bins in (3, 10, 64):
        out = KERNELS["histogram"](x, {"bins": bins})
        counts, edges = np.histogram(x, bins)
        np.testing.assert_array_equal(out["edges"], edges)
        np.testing.assert_array_equal(out["counts"], counts)


def test_histogram_refuses_a_span_that_overflows():
    with pytest.raises(InputError) as error:
        KERNELS["histogram"](np.array([-1e308, 1e308]))
    assert error.value.code == "range_overflow"


# --- quantiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    q=st.lists(
        st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0, 1)), min_size=1, max_size=101
    ),
)
def test_quantiles_match_numpy(dtype, data, q):
    x = data.draw(arrays(dtype, st.integers(1, 300), elements=values(dtype, nan=True)))
    out = KERNELS["quantiles"](x, {"q": q})
    wide = x.astype(np.float64)
    finite = wide[~np.isnan(wide)]
    expected = np.quantile(finite, q) if finite.size else np.full(len(q), np.nan)
    assert out["values"].dtype == np.float64
    np.testing.assert_array_equal(out["values"], expected)
    assert out["nan_count"] == int(np.isnan(x).sum())


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantiles_edges(dtype):
    quantiles = KERNELS["quantiles"]
    empty = quantiles(np.array([], dtype=dtype), {"q": [0.0, 0.5]})
    assert np.isnan(empty["values"]).all() and empty["values"].size == 2
    assert quantiles(np.array([7.0], dtype=dtype))["values"].tolist() == [7.0]
    assert quantiles(np.array([4.0, 1.0, 3.0, 2.0], dtype=dtype))["values"].tolist() == [2.5]
    holes = quantiles(np.array([np.nan, 1.0, np.nan, 3.0], dtype=dtype), {"q": [0, 0.5, 1]})
    assert holes["values"].tolist() == [1.0, 2.0, 3.0] and holes["nan_count"] == 2
    assert np.isnan(quantiles(np.array([np.nan], dtype=dtype))["values"]).all()
    # ±inf take part as extremes (numpy would answer NaN for every q here).
    inf = np.inf
    got = quantiles(np.array([inf, 1.0, -inf], dtype=dtype), {"q": [0, 0.25, 0.5, 0.75, 1]})
    assert got["values"].tolist() == [-inf, -inf, 1.0, inf, inf]
    both = quantiles(np.array([inf, -inf], dtype=dtype), {"q": [0.0, 0.5, 1.0]})["values"]
    assert both[0] == -inf and np.isnan(both[1]) and both[2] == inf
    for bad in ([], [1.5], [-0.1], [0.5] * 102):
        with pytest.raises(ParamError) as error:
            quantiles(np.ones(3, dtype=dtype), {"q": bad})
        assert error.value.errors[0]["field"] == "params.q"


@pytest.mark.parametrize("name", ["lttb", "histogram", "quantiles"])
def test_examples_run_for_every_dtype(name):
    kernel = KERNELS[name]
    kernel.warm()
    for dtype in kernel.inputs.dtypes:
        kernel(np.asarray(kernel.example["input"], dtype=dtype), kernel.example["params"])
