"""Streaming filters against scipy.signal, chunked against whole, and their designs."""

import math

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from appliance.kernels import InputError, ParamError, load_kernels
from appliance.kernels.filters import design_biquad

KERNELS = load_kernels(None)
DTYPES = [np.float32, np.float64]
# Float32 outputs are filtered in float64 and rounded once to float32: half an ulp (6e-8),
# or, for outputs below float32's normal range (tiny taps), up to its smallest normal.
OUT_RTOL = {np.float32: 1e-6, np.float64: 1e-12}
OUT_ATOL = {np.float32: float(np.finfo(np.float32).tiny), np.float64: 0.0}


def signals(dtype, min_size=0, max_size=300):
    # Samples below 1e-30 are zeroed: a float32 output rounding to a subnormal is off by
    # more than any relative tolerance, and such inputs say nothing about the filter.
    elements = st.floats(-1e3, 1e3, width=32 if dtype == np.float32 else 64)
    return arrays(dtype, st.integers(min_size, max_size), elements=elements).map(
        lambda x: np.where(np.abs(x) < 1e-30, 0, x).astype(dtype)
    )


# biquad --------------------------------------------------------------------------------


def cookbook(kind, f0, fs, q):
    """The RBJ Audio EQ Cookbook formulas, verbatim, with a0 left in."""
    w0 = 2 * math.pi * f0 / fs
    alpha = math.sin(w0) / (2 * q)
    cos_w0 = math.cos(w0)
    b = {
        "lowpass": [(1 - cos_w0) / 2, 1 - cos_w0, (1 - cos_w0) / 2],
        "highpass": [(1 + cos_w0) / 2, -(1 + cos_w0), (1 + cos_w0) / 2],
        "bandpass": [alpha, 0.0, -alpha],
    }[kind]
    return np.array(b), np.array([1 + alpha, -2 * cos_w0, 1 - alpha])


biquad_params = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["lowpass", "highpass", "bandpass"]),
        "sample_rate_hz": st.floats(100.0, 48_000.0),
        "cutoff_fraction": st.floats(0.01, 0.45),  # of the sample rate
        "q": st.floats(0.3, 5.0),
    }
).map(
    lambda p: {
        "kind": p["kind"],
        "sample_rate_hz": p["sample_rate_hz"],
        "cutoff_hz": p["cutoff_fraction"] * p["sample_rate_hz"],
        "q": p["q"],
    }
)


@settings(max_examples=200, deadline=None)
@given(params=biquad_params)
def test_biquad_design_matches_the_cookbook(params):
    b, a = design_biquad(params["kind"], params["cutoff_hz"], params["sample_rate_hz"], params["q"])
    ref_b, ref_a = cookbook(
        params["kind"], params["cutoff_hz"], params["sample_rate_hz"], params["q"]
    )
    assert a[0] == 1.0
    # The design writes 1 - cos(w0) as 2·sin²(w0/2): same value, a few ulps apart here.
    np.testing.assert_allclose(b, ref_b / ref_a[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a, ref_a / ref_a[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("kind", "dc", "at_cutoff", "nyquist"),
    [
        ("lowpass", 1.0, 2.0, 0.0),  # |H(f0)| = q for the cookbook low- and high-pass
        ("highpass", 0.0, 2.0, 1.0),
        ("bandpass", 0.0, 1.0, 0.0),  # constant 0 dB peak gain
    ],
)
def test_biquad_responses(kind, dc, at_cutoff, nyquist):
    b, a = design_biquad(kind, 1_000.0, 8_000.0, 2.0)
    _, response = scipy.signal.freqz(b, a, worN=[0.0, 1_000.0, 4_000.0], fs=8_000.0)
    np.testing.assert_allclose(np.abs(response), [dc, at_cutoff, nyquist], atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), params=biquad_params)
def test_biquad_matches_lfilter_and_chunks_compose(dtype, data, params):
    x = data.draw(signals(dtype, min_size=1))
    state = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=2))
    biquad = KERNELS["biquad"]
    whole = biquad(x, {**params, "state": state})
    assert whole["y"].dtype == dtype
    b, a = design_biquad(params["kind"], params["cutoff_hz"], params["sample_rate_hz"], params["q"])
    expected, expected_state = scipy.signal.lfilter(b, a, x.astype(np.float64), zi=state)
    # Same recurrence, same coefficients; only the rounding order may differ. Over the drawn
    # designs Σ|h| < 8, so |y| and the state stay below 2e4 for |x|, |state| <= 1e3, and
    # float64 rounding below 1e-13 of that (~500 eps; 2e-10 is the largest seen).
    atol = 1e-13 * 2e4
    np.testing.assert_allclose(whole["y"], expected, rtol=OUT_RTOL[dtype], atol=atol)
    np.testing.assert_allclose(whole["state"], expected_state, rtol=1e-12, atol=atol)
    cut = data.draw(st.integers(0, x.size))
    first = biquad(x[:cut], {**params, "state": state})
    second = biquad(x[cut:], {**params, "state": first["state"]})
    # The state crosses the JSON boundary as float64 numbers, losing nothing: bit-exact.
    np.testing.assert_array_equal(np.concatenate([first["y"], second["y"]]), whole["y"])
    assert second["state"] == whole["state"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_biquad_lowpass_attenuates_a_tone_far_above_cutoff(dtype):
    fs, cutoff = 8_000.0, 100.0
    t = np.arange(8_000) / fs
    params = {"kind": "lowpass", "cutoff_hz": cutoff, "sample_rate_hz": fs}

    def gain(frequency):
        tone = np.sin(2 * np.pi * frequency * t).astype(dtype)
        y = KERNELS["biquad"](tone, params)["y"].astype(np.float64)
        settled = slice(4_000, None)  # the transient decays within ~10 ms
        return np.sqrt(np.mean(y[settled] ** 2) / np.mean(tone[settled].astype(np.float64) ** 2))

    b, a = design_biquad("lowpass", cutoff, fs, 0.7071)
    _, expected = scipy.signal.freqz(b, a, worN=[2_000.0, 10.0], fs=fs)
    stop, passband = gain(2_000.0), gain(10.0)
    # -12 dB/octave over 4.3 octaves: about -52 dB.
    assert 20 * np.log10(stop) < -50
    assert stop == pytest.approx(abs(expected[0]), rel=1e-3)
    assert passband == pytest.approx(abs(expected[1]), rel=1e-3)
    assert passband == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_biquad_edges(dtype):
    biquad = KERNELS["biquad"]
    params = {"cutoff_hz": 100.0, "sample_rate_hz": 1_000.0}
    empty = biquad(np.array([], dtype=dtype), {**params, "state": [0.5, -0.25]})
    assert empty["y"].size == 0 and empty["y"].dtype == dtype
    assert empty["state"] == [0.5, -0.25]
    b, _ = design_biquad("lowpass", 100.0, 1_000.0, 0.7071)
    one = biquad(np.array([1.0], dtype=dtype), params)
    assert one["y"].tolist() == [pytest.approx(b[0], rel=OUT_RTOL[dtype])]
    dc = biquad(np.ones(2_000, dtype=dtype), params)["y"]
    assert dc[-1] == pytest.approx(1.0, rel=1e-6)  # unit gain at DC
    with pytest.raises(InputError) as caught:
        biquad(np.array([1.0, np.nan], dtype=dtype), params)
    assert caught.value.code == "nonfinite_input"
    with pytest.raises(InputError):
        biquad(np.array([np.inf], dtype=dtype), params)


GROUP = 4096  # samples per group of blocks in the biquad and ewma kernels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("kind", "cutoff", "q"),
    [("lowpass", 100.0, 0.7071), ("highpass", 4_900.0, 0.5), ("bandpass", 10.0, 50.0)],
)
def test_biquad_blocks_match_lfilter_on_long_inputs(dtype, kind, cutoff, q):
    # Long enough for several groups of blocks and a tail; the designs decay fast (to flushed
    # responses), slowly, and barely at all over one 512-sample block.
    x = np.random.default_rng(11).normal(size=5 * GROUP + 123).astype(dtype)
    params = {"kind": kind, "cutoff_hz": cutoff, "sample_rate_hz": 10_000.0, "q": q}
    state = [0.75, -0.5]
    got = KERNELS["biquad"](x, {**params, "state": state})
    b, a = design_biquad(kind, cutoff, 10_000.0, q)
    expected, expected_state = scipy.signal.lfilter(b, a, x.astype(np.float64), zi=state)
    scale = np.abs(expected).max() + 1.0
    np.testing.assert_allclose(got["y"], expected, rtol=OUT_RTOL[dtype], atol=1e-10 * scale)
    np.testing.assert_allclose(got["state"], expected_state, rtol=1e-12, atol=1e-10 * scale)


@pytest.mark.parametrize("cut", [GROUP, 3 * GROUP, 1_000, 2 * GROUP + 7])
def test_biquad_long_chunks_compose(cut):
    x = np.random.default_rng(12).normal(size=4 * GROUP + 50)
    params = {"kind": "lowpass", "cutoff_hz": 300.0, "sample_rate_hz": 10_000.0, "state": [1, 2]}
    biquad = KERNELS["biquad"]
    whole = biquad(x, params)
    first = biquad(x[:cut], params)
    second = biquad(x[cut:], {**params, "state": first["state"]})
    chunked = np.concatenate([first["y"], second["y"]])
    if cut % GROUP == 0:  # the same blocks either way: bit-for-bit
        np.testing.assert_array_equal(chunked, whole["y"])
        assert second["state"] == whole["state"]
    else:  # other blocks, other rounding
        np.testing.assert_allclose(chunked, whole["y"], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(second["state"], whole["state"], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cutoff", [500.0, 600.0])
def test_biquad_refuses_a_cutoff_at_or_above_nyquist(cutoff):
    with pytest.raises(ParamError) as caught:
        KERNELS["biquad"](np.zeros(4), {"cutoff_hz": cutoff, "sample_rate_hz": 1_000.0})
    assert caught.value.errors == [
        {
            "field": "params.cutoff_hz",
            "message": pytest.approx(
                "must be > 0 and < the Nyquist frequency 500 Hz (sample_rate_hz / 2)"
            ),
        }
    ]


def test_biquad_param_schema():
    biquad = KERNELS["biquad"]
    for bad, field in [
        ({"sample_rate_hz": 1_000.0}, "params.cutoff_hz"),
        ({"cutoff_hz": 0.0, "sample_rate_hz": 1_000.0}, "params.cutoff_hz"),
        ({"cutoff_hz": 1.0, "sample_rate_hz": 1e3, "q": 0.0}, "params.q"),
        ({"cutoff_hz": 1.0, "sample_rate_hz": 1e3, "kind": "notch"}, "params.kind"),
        ({"cutoff_hz": 1.0, "sample_rate_hz": 1e3, "state": [0.0]}, "params.state"),
    ]:
        with pytest.raises(ParamError) as caught:
            biquad(np.zeros(4), bad)
        assert [error["field"] for error in caught.value.errors] == [field]


# fir -----------------------------------------------------------------------------------


def reference_fir(taps, x, history):
    """np.convolve over the previous tail and the chunk; the outputs for the chunk."""
    extended = np.concatenate([history, x.astype(np.float64)])
    return np.convolve(extended, taps)[len(history) : len(history) + x.size]


taps_lists = st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=40)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), taps=taps_lists)
def test_fir_matches_convolve_and_chunks_compose(dtype, data, taps):
    x = data.draw(signals(dtype, min_size=1))
    order = len(taps) - 1
    history = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=order, max_size=order))
    fir = KERNELS["fir"]
    whole = fir(x, {"taps": taps, "state": history})
    assert whole["y"].dtype == dtype and whole["y"].size == x.size
    # A sum of at most 40 products: rounding stays far below 1e-12 of Σ|taps|·max|samples|.
    scale = sum(abs(t) for t in taps) * 1e3
    atol = 1e-12 * scale + OUT_ATOL[dtype]
    np.testing.assert_allclose(
        whole["y"], reference_fir(taps, x, history), rtol=OUT_RTOL[dtype], atol=atol
    )
    zi = scipy.signal.lfiltic(taps, [1.0], y=[], x=history[::-1])
    with_lfilter, _ = scipy.signal.lfilter(taps, [1.0], x.astype(np.float64), zi=zi)
    np.testing.assert_allclose(whole["y"], with_lfilter, rtol=OUT_RTOL[dtype], atol=atol)
    assert (
        whole["state"] == (history + x.astype(np.float64).tolist())[len(history) + x.size - order :]
    )
    cut = data.draw(st.integers(0, x.size))
    first = fir(x[:cut], {"taps": taps, "state": history})
    second = fir(x[cut:], {"taps": taps, "state": first["state"]})
    np.testing.assert_array_equal(np.concatenate([first["y"], second["y"]]), whole["y"])
    assert second["state"] == whole["state"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fir_edges(dtype):
    fir = KERNELS["fir"]
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=dtype)
    assert fir(x, {"taps": [2.0]}) == {"y": pytest.approx(2 * x), "state": []}
    moving_sum = fir(x, {"taps": [1.0, 1.0, 1.0]})
    assert moving_sum["y"].tolist() == [1.0, 3.0, 6.0, 9.0]
    assert moving_sum["state"] == [3.0, 4.0]
    assert fir(x, {"taps": [1.0, 1.0, 1.0], "state": [10.0, 20.0]})["y"].tolist() == [
        31.0,
        23.0,
        6.0,
        9.0,
    ]
    empty = fir(np.array([], dtype=dtype), {"taps": [1.0, 1.0, 1.0], "state": [5.0, 6.0]})
    assert empty["y"].size == 0 and empty["y"].dtype == dtype and empty["state"] == [5.0, 6.0]
    short = fir(np.array([7.0], dtype=dtype), {"taps": [0.0, 0.0, 1.0], "state": [5.0, 6.0]})
    assert short == {"y": pytest.approx([5.0]), "state": [6.0, 7.0]}
    long_taps = np.random.default_rng(5).normal(size=1024)
    signal = np.random.default_rng(6).normal(size=3_000).astype(dtype)
    np.testing.assert_allclose(
        fir(signal, {"taps": long_taps.tolist()})["y"],
        np.convolve(signal.astype(np.float64), long_taps)[:3_000],
        rtol=OUT_RTOL[dtype],
        atol=1e-9,
    )
    with pytest.raises(InputError) as caught:
        fir(np.array([1.0, np.nan], dtype=dtype), {"taps": [1.0]})
    assert caught.value.code == "nonfinite_input"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ntaps", [1, 3, 4, 32, 37])
def test_fir_long_inputs_match_convolve_and_chunks_compose(dtype, ntaps):
    # Several output blocks, tap counts on and off the groups of four.
    rng = np.random.default_rng(ntaps)
    taps = rng.normal(size=ntaps).tolist()
    history = rng.normal(size=ntaps - 1).tolist()
    x = rng.normal(size=2_000).astype(dtype)
    fir = KERNELS["fir"]
    whole = fir(x, {"taps": taps, "state": history})
    np.testing.assert_allclose(
        whole["y"], reference_fir(taps, x, history), rtol=OUT_RTOL[dtype], atol=1e-12
    )
    for cut in (1, 255, 700):
        first = fir(x[:cut], {"taps": taps, "state": history})
        second = fir(x[cut:], {"taps": taps, "state": first["state"]})
        np.testing.assert_array_equal(np.concatenate([first["y"], second["y"]]), whole["y"])


def test_fir_param_checks():
    fir = KERNELS["fir"]
    for bad, field in [
        ({}, "params.taps"),
        ({"taps": []}, "params.taps"),
        ({"taps": [1.0] * 1025}, "params.taps"),
        ({"taps": [1.0, 1.0], "state": [1.0, 2.0]}, "params.state"),
        ({"taps": [1.0, 1.0, 1.0], "state": [1.0]}, "params.state"),
    ]:
        with pytest.raises(ParamError) as caught:
            fir(np.zeros(4), bad)
        assert [error["field"] for error in caught.value.errors] == [field]
