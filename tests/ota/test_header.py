"""The preamble and header: magic, version, size cap before reading, strict CBOR shape."""

from __future__ import annotations

import struct

import cbor2
import pytest

from ota import ErrorCode, HeaderReader, OtaError, OtaMisuse
from ota.header import MAGIC, MAX_SIGNATURES, PREAMBLE_SIZE, encode_header, parse_header
from ota.signatures import MANIFEST_CONTEXT, Signature, sign
from tests.ota.craft import KEY_A, make_bundle


def preamble(length: int, version: int = 1) -> bytes:
    return MAGIC + bytes([version]) + struct.pack(">I", length)


def refused(data: bytes, **kwargs) -> OtaError:
    reader = HeaderReader(**kwargs)
    with pytest.raises(OtaError) as caught:
        reader.feed(data)
        reader.receive_eof()
    return caught.value


def test_a_good_header_reports_what_it_needs_and_where_the_payload_starts() -> None:
    bundle = make_bundle()
    reader = HeaderReader()
    assert reader.bytes_needed == PREAMBLE_SIZE == 19
    assert reader.feed(bundle[:10]) == 10
    assert reader.bytes_needed == 9
    assert reader.feed(bundle[10:19]) == 9
    (length,) = struct.unpack(">I", bundle[15:19])
    assert reader.bytes_needed == length
    used = reader.feed(bundle[19:])
    assert used == length and reader.done and reader.bytes_needed == 0
    header = reader.header
    assert header is not None and header.size == 19 + length
    assert header.signatures[0].key_id == KEY_A.key_id
    assert reader.feed(b"more") == 0  # payload bytes are not the header's


def test_every_split_of_the_header_gives_the_same_header() -> None:
    bundle = make_bundle()
    whole = HeaderReader()
    whole.feed(bundle)
    for cut in range(0, 60):
        reader = HeaderReader()
        used = reader.feed(bundle[:cut]) + reader.feed(bundle[cut:])
        assert reader.header == whole.header and used == whole.header.size


@pytest.mark.parametrize("garbage", [b"X", b"PK\x03\x04", b"APPLIANCE-OTB\n", b"appliance-ota\n"])
def test_bad_magic_is_refused_at_the_first_wrong_byte(garbage: bytes) -> None:
    error = refused(garbage)
    assert error.code == ErrorCode.BAD_MAGIC == "bad_magic"


def test_an_unknown_container_version_is_bad_magic() -> None:
    error = refused(preamble(10, version=2))
    assert error.code == ErrorCode.BAD_MAGIC and "version 2" in error.detail


def test_a_header_over_the_cap_is_refused_from_the_length_alone() -> None:
    # Only the 19 preamble bytes are given: the reader refuses before any header byte
    # exists, so it never buffers (or waits for) the 4 GiB it was promised.
    error = refused(preamble(0xFFFFFFFF))
    assert error.code == ErrorCode.HEADER_TOO_LARGE
    error = refused(preamble(1025), max_header_size=1024)
    assert error.code == ErrorCode.HEADER_TOO_LARGE
    reader = HeaderReader(max_header_size=1024)
    reader.feed(preamble(1024))
    assert reader.bytes_needed == 1024  # exactly the cap is allowed


def test_the_default_cap_is_one_mebibyte() -> None:
    assert refused(preamble((1 << 20) + 1)).code == ErrorCode.HEADER_TOO_LARGE
    reader = HeaderReader()
    reader.feed(preamble(1 << 20))
    assert reader.bytes_needed == 1 << 20


def cbor_header(value: object) -> bytes:
    body = cbor2.dumps(value)
    return preamble(len(body)) + body


GOOD_SIG = {"key_id": KEY_A.key_id, "signature": bytes(64)}


@pytest.mark.parametrize(
    "body",
    [
        preamble(0),
        preamble(3) + b"\xff\xff\xff",
        preamble(2) + b"\x9f\xff",  # indefinite array
        cbor_header([b"manifest", []]),
        cbor_header({"manifest": b"m"}),
        cbor_header({"manifest": b"m", "signatures": [], "extra": 1}),
        cbor_header({"manifest": "text, not bytes", "signatures": []}),
        cbor_header({"manifest": b"", "signatures": []}),
        cbor_header({"manifest": b"m", "signatures": {}}),
        cbor_header({"manifest": b"m", "signatures": [GOOD_SIG] * (MAX_SIGNATURES + 1)}),
        cbor_header({"manifest": b"m", "signatures": [{"key_id": KEY_A.key_id}]}),
        cbor_header({"manifest": b"m", "signatures": [{**GOOD_SIG, "signature": bytes(63)}]}),
        cbor_header({"manifest": b"m", "signatures": [{**GOOD_SIG, "key_id": "ABCDEF0123456789"}]}),
        cbor_header({"manifest": b"m", "signatures": [{**GOOD_SIG, "key_id": b"\x01" * 8}]}),
        cbor_header({"manifest": b"m", "signatures": [{**GOOD_SIG, "x": 1}]}),
        cbor_header({"manifest": cbor2.CBORTag(24, b"m"), "signatures": []}),
        cbor_header({"manifest": b"m", "signatures": [], 1: 2}),
        preamble(len(cbor2.dumps({"manifest": b"m", "signatures": []})) + 1)
        + cbor2.dumps({"manifest": b"m", "signatures": []})
        + b"\x00",  # a byte after the map, inside the declared length
    ],
    ids=lambda body: body[19:40].hex() or "empty",
)
def test_malformed_headers_are_bad_header(body: bytes) -> None:
    assert refused(body).code == ErrorCode.BAD_HEADER


def test_a_header_without_signatures_parses_and_is_left_to_the_verifier() -> None:
    reader = HeaderReader()
    reader.feed(cbor_header({"manifest": b"m", "signatures": []}))
    assert reader.header is not None and reader.header.signatures == ()


def test_the_manifest_bytes_are_kept_exactly_as_stored() -> None:
    # Non-canonical CBOR in the manifest (a 1-byte integer written in 8 bytes) survives
    # untouched: the header layer never decodes or re-encodes the manifest.
    odd = bytes.fromhex("a1") + cbor2.dumps("format") + bytes.fromhex("1b0000000000000001")
    header = parse_header(cbor2.dumps({"manifest": odd, "signatures": []}))
    assert header.manifest == odd


def test_the_end_of_input_inside_the_header_is_truncated() -> None:
    bundle = make_bundle()
    for cut in (0, 5, 19, 40):
        reader = HeaderReader()
        reader.feed(bundle[:cut])
        with pytest.raises(OtaError) as caught:
            reader.receive_eof()
        assert caught.value.code == ErrorCode.TRUNCATED


def test_a_refusing_reader_is_spent() -> None:
    reader = HeaderReader()
    with pytest.raises(OtaError):
        reader.feed(b"nope")
    with pytest.raises(OtaMisuse):
        reader.feed(make_bundle())


def test_encode_header_round_trips() -> None:
    raw = b"\xa0"
    sigs = sign(MANIFEST_CONTEXT, raw, [KEY_A])
    reader = HeaderReader()
    reader.feed(encode_header(raw, sigs))
    assert reader.header is not None
    assert reader.header.manifest == raw
    assert reader.header.signatures == (Signature(KEY_A.key_id, sigs[0].signature),)
