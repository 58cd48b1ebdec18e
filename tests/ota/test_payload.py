"""The streaming payload reader: events, hashing, truncation, trailing data, misuse."""

from __future__ import annotations

import cbor2
import pytest

from ota import (
    NEED_DATA,
    PAYLOAD_DONE,
    ErrorCode,
    FileData,
    FileDone,
    FileStart,
    OtaError,
    OtaMisuse,
    PayloadReader,
    parse_manifest,
)
from tests.ota.craft import FILES, check_bytes, entry, make_bundle, manifest_doc, payload_of, split


def reader_for(contents=FILES) -> PayloadReader:
    return PayloadReader(parse_manifest(cbor2.dumps(manifest_doc(contents), canonical=True)))


def drain(reader: PayloadReader) -> list:
    events = []
    while (event := reader.next_event()) is not NEED_DATA:
        events.append(event)
        if event is PAYLOAD_DONE:
            break
    return events


def describe(events: list) -> list:
    out = []
    for event in events:
        if isinstance(event, FileStart):
            out.append(("start", event.entry.path))
        elif isinstance(event, FileData):
            out.append(("data", event.entry.path, bytes(event.data)))
        elif isinstance(event, FileDone):
            out.append(("done", event.entry.path))
        else:
            out.append(event)
    return out


def test_events_for_a_payload_fed_whole() -> None:
    contents = {"a": (b"abc", 0o100644), "empty": (b"", 0o100644), "b": (b"de", 0o100755)}
    reader = reader_for(contents)
    reader.receive_data(b"abcde")
    events = drain(reader)
    reader.receive_eof()
    events += drain(reader)
    assert describe(events) == [
        ("start", "a"),
        ("data", "a", b"abc"),
        ("done", "a"),
        ("start", "empty"),
        ("done", "empty"),
        ("start", "b"),
        ("data", "b", b"de"),
        ("done", "b"),
        PAYLOAD_DONE,
    ]
    assert reader.offset == 5


def test_data_events_are_views_of_the_callers_chunk_not_copies() -> None:
    reader = reader_for({"a": (b"abcd", 0o100644)})
    chunk = bytearray(b"abcd")
    events = list(reader.feed(chunk))
    data = events[1]
    assert isinstance(data, FileData) and data.data.obj is chunk


def test_a_payload_of_only_empty_files_needs_no_data() -> None:
    reader = reader_for({"x": (b"", 0o100644), "y": (b"", 0o100644)})
    assert describe(list(reader.finish())) == [
        ("start", "x"),
        ("done", "x"),
        ("start", "y"),
        ("done", "y"),
        PAYLOAD_DONE,
    ]


def test_a_payload_byte_changed() -> None:
    payload = bytearray(payload_of())
    payload[30] ^= 0x01
    with pytest.raises(OtaError) as caught:
        check_bytes(make_bundle(payload=bytes(payload)))
    assert caught.value.code == ErrorCode.PAYLOAD_HASH_MISMATCH
    assert "lib/model.bin" in caught.value.detail


def test_the_hash_mismatch_comes_at_the_end_of_the_bad_file_not_before() -> None:
    reader = reader_for({"a": (b"abc", 0o100644), "b": (b"de", 0o100644)})
    reader.receive_data(b"abX")
    assert describe([reader.next_event(), reader.next_event()]) == [
        ("start", "a"),
        ("data", "a", b"abX"),
    ]
    with pytest.raises(OtaError) as caught:
        reader.next_event()
    assert caught.value.code == ErrorCode.PAYLOAD_HASH_MISMATCH
    with pytest.raises(OtaMisuse):
        reader.next_event()


@pytest.mark.parametrize("missing", [1, 100, len(payload_of())])
def test_payload_truncated(missing: int) -> None:
    with pytest.raises(OtaError) as caught:
        check_bytes(make_bundle(payload=payload_of()[:-missing]))
    assert caught.value.code == ErrorCode.TRUNCATED


@pytest.mark.parametrize("extra", [b"\x00", b"more data", b"x" * 5000])
def test_trailing_extra_data(extra: bytes) -> None:
    with pytest.raises(OtaError) as caught:
        check_bytes(make_bundle(payload=payload_of() + extra))
    assert caught.value.code == ErrorCode.TRAILING_DATA


def test_trailing_data_in_a_later_chunk_is_refused_before_the_end_of_input() -> None:
    reader = reader_for({"a": (b"abc", 0o100644)})
    assert describe(list(reader.feed(b"abc"))) == [
        ("start", "a"),
        ("data", "a", b"abc"),
        ("done", "a"),
    ]
    with pytest.raises(OtaError) as caught:
        list(reader.feed(b"!"))
    assert caught.value.code == ErrorCode.TRAILING_DATA


def test_declared_sizes_that_disagree_with_the_data_never_pass() -> None:
    # Two files whose declared sizes are swapped: the total is right, the boundaries are
    # not, so the first file's hash is computed over the wrong bytes.
    a, b = b"first file", b"second"
    doc = manifest_doc(
        files=[{**entry("a", a), "size": len(b)}, {**entry("b", b), "size": len(a)}],
        total_size=len(a) + len(b),
    )
    with pytest.raises(OtaError) as caught:
        check_bytes(make_bundle(doc, payload=a + b))
    assert caught.value.code == ErrorCode.PAYLOAD_HASH_MISMATCH


def test_every_split_gives_the_same_files() -> None:
    bundle = make_bundle()
    _, whole = check_bytes(bundle)
    for cut in range(0, len(bundle), 7):
        _, files = check_bytes(split(bundle, [cut, cut + 1, cut + 300]))
        assert files == whole
    _, one_by_one = check_bytes([bundle[i : i + 1] for i in range(len(bundle))])
    assert one_by_one == whole


def test_misuse_is_not_a_verdict_on_the_bundle() -> None:
    reader = reader_for({"a": (b"abc", 0o100644)})
    reader.receive_data(b"ab")
    with pytest.raises(OtaMisuse):
        reader.receive_data(b"c")  # the first chunk was not drained
    drain(reader)
    reader.receive_data(b"c")
    reader.receive_eof()
    with pytest.raises(OtaMisuse):
        reader.receive_data(b"")
    assert describe(drain(reader))[-1] is PAYLOAD_DONE
    with pytest.raises(OtaMisuse):
        reader.next_event()
