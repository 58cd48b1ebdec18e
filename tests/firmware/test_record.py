"""The stored boot state record: exact bytes, round trips, and garbage refused precisely."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import BootState, FailedVersion, StateError
from firmware.record import MAGIC, MAX_RECORD, decode_state, encode_state

STATE = BootState(
    seq=7,
    current="b",
    good="a",
    pending="b",
    tries_left=2,
    versions={"a": "1.0.0", "b": "1.1.0"},
    failed=(FailedVersion("0.9.0", "b", "tries_exhausted", "gave up", 1700000000),),
)


def test_the_record_layout():
    data = encode_state(STATE)
    magic, digest, body, end = data.split(b"\n")
    assert magic + b"\n" == MAGIC == b"appliance-boot-state 1\n"
    assert digest == b"sha256:" + hashlib.sha256(body).hexdigest().encode()
    assert end == b""
    assert body == (
        b'{"current":"b","failed":[{"at":1700000000,"cause":"tries_exhausted","detail":'
        b'"gave up","slot":"b","version":"0.9.0"}],"good":"a","pending":"b",'
        b'"previous_good":null,"seq":7,"tries_left":2,"versions":{"a":"1.0.0","b":"1.1.0"}}'
    )
    assert decode_state(data) == STATE


def reseal(body: bytes) -> bytes:
    """A record whose checksum is right but whose body is what we say."""
    return MAGIC + b"sha256:" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body + b"\n"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "state_truncated"),
        (b"appliance-boot", "state_truncated"),
        (b"something else entirely\n", "state_magic"),
        (encode_state(STATE)[:-1], "state_truncated"),
        (encode_state(STATE)[:60], "state_truncated"),
        (encode_state(STATE) + b"x", "state_truncated"),
        (encode_state(STATE).replace(b'"tries_left":2', b'"tries_left":3'), "state_checksum"),
        (MAGIC + b"md5:abc\n{}\n", "state_checksum"),
        (reseal(b"{not json"), "state_json"),
        (reseal(b'{"seq": NaN}'), "state_json"),
        (reseal(b"[]"), "state_field"),
        (
            reseal(encode_state(STATE).split(b"\n")[2].replace(b'"seq":7', b'"seq":true')),
            "state_field",
        ),
        (
            reseal(encode_state(STATE).split(b"\n")[2].replace(b'"good":"a"', b'"good":"b"')),
            "state_field",
        ),
        (reseal(encode_state(STATE).split(b"\n")[2].replace(b'"0.9.0"', b'"../x"')), "state_field"),
        (b"x" * (MAX_RECORD + 1), "state_too_large"),
    ],
)
def test_bad_records_are_refused_with_a_precise_code(data, code):
    with pytest.raises(StateError) as error:
        decode_state(data)
    assert error.value.code == code


slots = st.sampled_from(["a", "b"])
versions = st.from_regex(r"[0-9A-Za-z][0-9A-Za-z.+_~-]{0,20}", fullmatch=True)
failures = st.builds(
    FailedVersion,
    version=versions,
    slot=slots,
    cause=st.sampled_from(["tries_exhausted", "slot_incomplete", "manual"]),
    detail=st.text(
        st.characters(min_codepoint=0x20, blacklist_categories=["Cs"]), max_size=40
    ).filter(lambda s: "\x7f" not in s),
    at=st.integers(0, 2**40),
)


@st.composite
def states(draw):
    current = draw(slots)
    other = "b" if current == "a" else "a"
    version_map = {current: draw(versions), other: draw(versions)}
    common = {
        "seq": draw(st.integers(0, 2**53)),
        "versions": version_map,
        "failed": tuple(draw(st.lists(failures, max_size=5))),
    }
    if draw(st.booleans()):
        return BootState(
            current=current,
            good=other,
            pending=current,
            tries_left=draw(st.integers(0, 100)),
            **common,
        )
    previous = other if draw(st.booleans()) else None
    return BootState(current=current, good=current, previous_good=previous, **common)


@settings(deadline=None)
@given(states())
def test_round_trip(state):
    assert decode_state(encode_state(state)) == state


@settings(deadline=None)
@given(states(), st.data())
def test_any_damage_is_detected(state, data):
    record = bytearray(encode_state(state))
    position = data.draw(st.integers(0, len(record) - 1))
    record[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(StateError):
        decode_state(bytes(record))


@settings(deadline=None)
@given(states(), st.data())
def test_any_truncation_is_detected(state, data):
    record = encode_state(state)
    cut = data.draw(st.integers(0, len(record) - 1))
    with pytest.raises(StateError):
        decode_state(record[:cut])


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_state_error_and_nothing_else(data):
    try:
        decode_state(data)
    except StateError:
        pass


@settings(deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=9)
        ),
        max_leaves=20,
    )
)
def test_any_json_body_with_a_good_checksum_decodes_or_raises_state_error(value):
    import json

    try:
        decode_state(reseal(json.dumps(value).encode()))
    except StateError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@settings(deadline=None)
@given(states(), st.data())
def test_a_valid_record_with_any_field_replaced_decodes_or_raises_state_error(state, data):
    import json

    fields = json.loads(encode_state(state).split(b"\n")[2])
    name = data.draw(st.sampled_from(sorted(fields)))
    fields[name] = data.draw(json_values)
    if fields["failed"] and isinstance(fields["failed"], list):
        entry = data.draw(st.sampled_from(["version", "slot", "cause", "detail", "at"]))
        if isinstance(fields["failed"][0], dict):
            fields["failed"][0][entry] = data.draw(json_values)
    try:
        decoded = decode_state(reseal(json.dumps(fields).encode()))
    except StateError:
        return
    assert decode_state(encode_state(decoded)) == decoded
