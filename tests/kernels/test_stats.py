"""Streaming statistics against NumPy references, on edge cases and random inputs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from appliance.kernels import load_kernels

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
    np.testing.assert_allclose(np.concatenate([first["y"], second["y"]]), whole["y"],
                               rtol=RTOL[dtype], atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ewma_edges(dtype):
    ewma = KERNELS["ewma"]
    empty = ewma(np.array([], dtype=dtype))
    assert empty["y"].size == 0 and empty["state"] is None
    assert ewma(np.array([5.0], dtype=dtype))["y"].tolist() == [5.0]
    poisoned = ewma(np.array([1.0, np.nan, 2.0], dtype=dtype), {"alpha": 0.5})["y"]
    assert poisoned[0] == 1.0 and np.isnan(poisoned[1:]).all()
