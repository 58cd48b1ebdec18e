"""The frame codec: layout, chunking, and every kind of bad input with its error code."""

from __future__ import annotations

import zlib

import cbor2
import pytest

from appliance.bus.codec import (
    MAX_DEPTH,
    Frame,
    FrameDecoder,
    choose_version,
    decode_body,
    encode_frame,
    encode_varint,
)
from appliance.bus.reasons import (
    BadCbor,
    BadCrc,
    BadVarint,
    BadVersion,
    FrameError,
    FrameTooLarge,
    LocalProtocolError,
    Truncated,
    reason_for,
)


def raw_frame(body: bytes, version: int = 1, length: int | None = None) -> bytes:
    """A frame around raw CBOR bytes, with a correct checksum."""
    head = encode_varint(version) + encode_varint(len(body) if length is None else length)
    return head + body + zlib.crc32(head + body).to_bytes(4, "big")


def frames_of(events: list[Frame | FrameError]) -> list[dict]:
    assert all(isinstance(e, Frame) for e in events), events
    return [e.body for e in events]


BODIES = [
    {"ping": {"seq": 1, "time_us": 2}},
    {"publish": {"topic": "a.b", "data": b"\x00" * 300}},  # a 2-byte length varint
    {"x": [1, -1, 1.5, None, True, False, "é", b""], "y": {"z": -(2**64)}},
]


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (2**64 - 1, "ff" * 9 + "01")],
)
def test_varint_is_minimal_leb128(value: int, encoded: str) -> None:
    assert encode_varint(value).hex() == encoded


@pytest.mark.parametrize("value", [-1, 2**64])
def test_varint_out_of_range_is_a_local_error(value: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_varint(value)


def test_frame_layout_byte_by_byte() -> None:
    frame = encode_frame({"a": 1})
    body = cbor2.dumps({"a": 1})
    assert frame[0] == 1  # version
    assert frame[1] == len(body) == 4  # length
    assert frame[2:6] == body == bytes.fromhex("a1616101")
    assert frame[6:] == zlib.crc32(frame[:6]).to_bytes(4, "big")
    assert frame.hex() == "0104a1616101" + f"{zlib.crc32(bytes.fromhex('0104a1616101')):08x}"


def test_round_trip_fed_whole_and_byte_by_byte() -> None:
    stream = b"".join(encode_frame(b) for b in BODIES)
    assert frames_of(FrameDecoder().feed(stream)) == BODIES
    decoder = FrameDecoder()
    events: list[Frame | FrameError] = []
    for i in range(len(stream)):
        events += decoder.feed(stream[i : i + 1])
    assert frames_of(events) == BODIES
    assert decoder.buffered == 0


def test_every_split_point() -> None:
    stream = b"".join(encode_frame(b) for b in BODIES)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        events = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert frames_of(events) == BODIES, cut
        assert decoder.eof() is None


def test_every_pair_of_split_points_in_a_small_stream() -> None:
    stream = encode_frame({"a": 1}) + encode_frame({"b": b"xy"})
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            decoder = FrameDecoder()
            events = decoder.feed(stream[:i]) + decoder.feed(stream[i:j]) + decoder.feed(stream[j:])
            assert frames_of(events) == [{"a": 1}, {"b": b"xy"}]


def test_many_frames_in_one_chunk_accepts_any_buffer_type() -> None:
    stream = b"".join(encode_frame({"n": n}) for n in range(1000))
    for data in (stream, bytearray(stream), memoryview(stream)):
        assert frames_of(FrameDecoder().feed(data)) == [{"n": n} for n in range(1000)]


def test_frame_reports_its_version_and_size() -> None:
    frame = encode_frame({"a": 1})
    assert FrameDecoder().feed(frame) == [Frame(1, {"a": 1}, len(frame))]


# --- framing errors (fatal) ------------------------------------------------------------------


def fatal(decoder: FrameDecoder, data: bytes, kind: type[FrameError]) -> FrameError:
    events = decoder.feed(data)
    error = events[-1]
    assert isinstance(error, kind), events
    assert error.fatal and decoder.failed is error
    assert decoder.buffered == 0
    with pytest.raises(LocalProtocolError):
        decoder.feed(encode_frame({"a": 1}))
    return error


@pytest.mark.parametrize("version", [0, 2, 127, 128, 2**40])
def test_unknown_version_is_refused(version: int) -> None:
    error = fatal(FrameDecoder(), raw_frame(b"\xa0", version=version), BadVersion)
    assert error.code == "bad_version" and error.reason.code == 11


def test_version_is_refused_from_its_first_byte() -> None:
    # 0x80: a multi-byte varint, so at least 128: refused before the rest arrives.
    fatal(FrameDecoder(), b"\x80", BadVersion)


def test_accepted_versions_can_be_narrowed_after_negotiation() -> None:
    decoder = FrameDecoder(versions=frozenset({1, 3}))
    assert frames_of(decoder.feed(raw_frame(b"\xa0", version=3))) == [{}]
    decoder.versions = frozenset({3})
    fatal(decoder, raw_frame(b"\xa0", version=1), BadVersion)


def test_choose_version_takes_the_highest_common_one() -> None:
    assert choose_version([1]) == 1
    assert choose_version([3, 1, 2], [1, 2]) == 2
    assert choose_version([5]) is None


def test_length_over_max_frame_is_refused() -> None:
    decoder = FrameDecoder(max_frame=100)
    exactly_100 = cbor2.dumps({"a": b"x" * 95})
    assert len(exactly_100) == 100
    assert frames_of(decoder.feed(raw_frame(exactly_100))) == [{"a": b"x" * 95}]
    error = fatal(decoder, raw_frame(cbor2.dumps({"a": b"x" * 96})), FrameTooLarge)
    assert error.code == "frame_too_large" and error.reason.code == 12


def test_huge_length_is_refused_from_the_header_alone() -> None:
    # A frame claiming 2**40 bytes: 01, then the length varint 80 80 80 80 80 20. With a
    # 1 MiB limit the third length byte already proves the length is >= 2**21.
    decoder = FrameDecoder(max_frame=1 << 20)
    header = b"\x01" + encode_varint(2**40)
    assert header.hex() == "01808080808020"
    assert decoder.feed(header[:3]) == []
    assert decoder.buffered == 3
    events = decoder.feed(header[3:4])
    assert [type(e) for e in events] == [FrameTooLarge]
    assert decoder.buffered == 0
    # Fed whole (with a body that never comes), the same refusal, nothing allocated.
    whole = FrameDecoder(max_frame=1 << 20)
    fatal(whole, header + b"\xa0" * 10, FrameTooLarge)


def test_non_minimal_varint_is_refused() -> None:
    fatal(FrameDecoder(), b"\x01\x81\x00", BadVarint)  # length 1 written in two bytes


def test_decoder_refuses_bad_limits() -> None:
    with pytest.raises(LocalProtocolError):
        FrameDecoder(max_frame=0)
    with pytest.raises(LocalProtocolError):
        FrameDecoder(max_bad_crc=0)


def test_truncated_at_eof() -> None:
    frame = encode_frame({"a": 1})
    decoder = FrameDecoder()
    assert decoder.feed(frame + frame[:5]) == [Frame(1, {"a": 1}, len(frame))]
    error = decoder.eof()
    assert isinstance(error, Truncated) and error.reason.name == "truncated"
    assert decoder.failed is error
    clean = FrameDecoder()
    clean.feed(frame)
    assert clean.eof() is None


# --- checksums ---------------------------------------------------------------------------------


def corrupt(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


def test_bad_crc_drops_the_frame_and_decoding_goes_on() -> None:
    good, bad = encode_frame({"a": 1}), corrupt(encode_frame({"b": 2}))
    decoder = FrameDecoder(max_bad_crc=3)
    events = decoder.feed(bad + bad + good + bad)
    assert [type(e) for e in events] == [BadCrc, BadCrc, Frame, BadCrc]
    assert [e.consecutive for e in events if isinstance(e, BadCrc)] == [1, 2, 1]
    assert not any(e.fatal for e in events if isinstance(e, BadCrc))
    assert decoder.bad_crc_run == 1 and decoder.failed is None


def test_consecutive_bad_crcs_up_to_the_limit_are_fatal() -> None:
    bad = corrupt(encode_frame({"b": 2}))
    decoder = FrameDecoder(max_bad_crc=3)
    events = decoder.feed(bad * 5)
    assert [type(e) for e in events] == [BadCrc, BadCrc, BadCrc]
    assert events[-1].fatal and decoder.failed is events[-1]
    assert reason_for(events[-1].code).code == 13


def test_a_flipped_body_bit_is_a_bad_crc() -> None:
    frame = bytearray(encode_frame({"topic": "a"}))
    frame[4] ^= 0x01
    assert [type(e) for e in FrameDecoder().feed(bytes(frame))] == [BadCrc]


# --- CBOR the protocol refuses (non-fatal: the frame boundaries are intact) ---------------

BAD_CBOR = {
    "not a map (array)": "8101",
    "not a map (text)": "6161",
    "empty body": "",
    "indefinite map": "bf616101ff",
    "indefinite array inside": "a161619f01ff",
    "indefinite byte string inside": "a161615f4101ff",
    "indefinite text string inside": "a161617f6178ff",
    "duplicate keys": "a2616101616102",
    "tag 1 (epoch time)": "a16161c11a00000000",
    "tag 2 (bignum)": "a16161c249010000000000000000",
    "tag 28 (shared value)": "a16161d81c01",
    "tag 55799 (self-described CBOR)": "d9d9f7a1616101",
    "unknown tag": "a16161d9270f01",
    "trailing bytes": "a161610100",
    "second map after the first": "a1616101a0",
    "map shorter than declared": "a2616101",
    "byte string longer than the body": "a161615a00010000",
    "undefined": "a16161f7",
    "simple value 16": "a16161f0",
    "integer key": "a10101",
    "byte string key": "a1416101",
    "array key": "a1810101",
    "invalid UTF-8 text": "a1616162ffff",
    "break outside indefinite item": "a16161ff",
    "reserved additional info": "a161611c",
}


@pytest.mark.parametrize("body_hex", BAD_CBOR.values(), ids=BAD_CBOR.keys())
def test_refused_cbor_is_bad_cbor_and_the_next_frame_decodes(body_hex: str) -> None:
    decoder = FrameDecoder()
    events = decoder.feed(raw_frame(bytes.fromhex(body_hex)) + encode_frame({"ok": 1}))
    assert [type(e) for e in events] == [BadCbor, Frame], events
    assert events[0].code == "bad_cbor" and not events[0].fatal
    assert events[1].body == {"ok": 1}
    assert decoder.failed is None


def nested(depth: int) -> bytes:
    """A body map whose value is nested so that `depth` containers are open in all."""
    return b"\xa1\x61a" + b"\x81" * (depth - 1) + b"\x01"


def test_nesting_up_to_max_depth_is_allowed_and_deeper_is_refused() -> None:
    assert decode_body(nested(MAX_DEPTH))
    with pytest.raises(BadCbor):
        decode_body(nested(MAX_DEPTH + 1))
    with pytest.raises(BadCbor):
        decode_body(nested(10_000))


def test_allowed_subset_decodes() -> None:
    body = bytes.fromhex(
        "a8"
        "617500"  # "u": 0
        "616e3bffffffffffffffff"  # "n": -2**64
        "6168f93c00"  # "h": 1.0 as float16
        "6166fa3fc00000"  # "f": 1.5 as float32
        "6164fb400921fb54442d18"  # "d": pi as float64
        "6162f5"  # "b": true
        "617af6"  # "z": null
        "616182f440"  # "a": [false, h'']
    )
    value = decode_body(body)
    assert value == {
        "u": 0,
        "n": -(2**64),
        "h": 1.0,
        "f": 1.5,
        "d": 3.141592653589793,
        "b": True,
        "z": None,
        "a": [False, b""],
    }


def test_encode_frame_refuses_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame({"a": b"x" * 200}, max_frame=100)
    with pytest.raises(LocalProtocolError):
        encode_frame([1, 2])  # type: ignore[arg-type]


# --- memory ------------------------------------------------------------------------------------


def test_buffer_never_exceeds_one_frame() -> None:
    max_frame = 4096
    decoder = FrameDecoder(max_frame=max_frame)
    big = encode_frame({"d": b"x" * (max_frame - 10)}, max_frame=max_frame)
    small = encode_frame({"a": 1})
    stream = (big + small) * 3
    peak = 0
    frames = 0
    for i in range(0, len(stream), 7):
        frames += len(decoder.feed(stream[i : i + 7]))
        peak = max(peak, decoder.buffered)
    assert frames == 6
    assert peak <= len(big) <= decoder.max_buffered


def test_whole_chunks_are_not_copied_into_the_buffer() -> None:
    decoder = FrameDecoder()
    frame = encode_frame({"a": 1})
    decoder.feed(frame * 100 + frame[:3])
    assert decoder.buffered == 3
