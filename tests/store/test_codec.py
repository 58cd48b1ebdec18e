"""Key and value encodings: round trips and order preservation."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.store import decode_value, encode_value, pack_key, unpack_key

ints = st.integers(min_value=0, max_value=2**64 - 1)
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
blobs = st.binary(max_size=40)
parts = st.one_of(ints, texts, blobs)


@given(st.lists(parts, max_size=5))
def test_keys_round_trip(values):
    assert unpack_key(pack_key(*values)) == tuple(values)


@given(st.lists(ints, min_size=1, max_size=3), st.lists(ints, min_size=1, max_size=3))
def test_int_keys_sort_like_tuples(a, b):
    if len(a) == len(b):
        assert (pack_key(*a) < pack_key(*b)) == (tuple(a) < tuple(b))


@given(texts, texts)
def test_text_keys_sort_like_utf8(a, b):
    assert (pack_key(a) < pack_key(b)) == (a.encode() < b.encode())


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.text()
        | st.binary()
        | st.floats(allow_nan=False),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=20,
    )
)
def test_values_round_trip(value):
    assert decode_value(encode_value(value)) == value


@pytest.mark.parametrize("bad", [-1, 2**64, True, 1.5, "a\x00b", "\ud800", None])
def test_bad_key_parts_are_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        pack_key(bad)


@pytest.mark.parametrize("garbage", [b"\x01\x00", b"\x02abc", b"\x03\x00\x05ab", b"\x09"])
def test_truncated_or_unknown_keys_raise(garbage):
    with pytest.raises(ValueError):
        unpack_key(garbage)


def test_long_keys_are_refused():
    with pytest.raises(ValueError):
        pack_key("x" * 600)
