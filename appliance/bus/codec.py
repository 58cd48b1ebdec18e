"""Bus framing, sans-IO: bytes in, frames out; no sockets, no trio.

A frame is

    varint(version) varint(length) body crc32

`varint` is unsigned LEB128, minimal, at most 10 bytes; `body` is `length` bytes holding one
definite-length CBOR map; `crc32` is zlib's CRC-32 of every byte before it, 4 bytes
big-endian. `docs/bus-protocol.md` is the full specification.

`FrameDecoder.feed(chunk)` takes bytes split anywhere and returns, in order, a `Frame` for
each good frame and a `FrameError` (returned, not raised) for each bad one. The length is
checked against `max_frame` as soon as its varint is read, before any of the body is
buffered; the decoder never holds more than `max_frame + MAX_HEADER_BYTES + CRC_BYTES`
bytes. Each body is decoded by a fresh strict CBOR decoder (cbor2's C decoder configured to
refuse indefinite lengths, duplicate keys and every tag) and then checked against the
subset the protocol allows. A fatal error (`error.fatal`) means the stream can no longer be
split into frames: the decoder stops, and the connection must close with `error.reason`.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from appliance.bus.reasons import (
    BadCbor,
    BadCrc,
    BadVarint,
    BadVersion,
    FrameError,
    FrameTooLarge,
    LocalProtocolError,
    Truncated,
)

__all__ = [
    "CRC_BYTES",
    "DEFAULT_MAX_BAD_CRC",
    "DEFAULT_MAX_FRAME",
    "MAX_DEPTH",
    "MAX_HEADER_BYTES",
    "MAX_VARINT_BYTES",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Frame",
    "FrameDecoder",
    "choose_version",
    "decode_body",
    "encode_frame",
    "encode_varint",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: frozenset[int] = frozenset({PROTOCOL_VERSION})
DEFAULT_MAX_FRAME = 1 << 20
DEFAULT_MAX_BAD_CRC = 3
MAX_VARINT_BYTES = 10  # an unsigned 64-bit value
MAX_HEADER_BYTES = 2 * MAX_VARINT_BYTES
CRC_BYTES = 4
# Containers nested at most this deep, the body's own map counting as 1.
MAX_DEPTH = 8

_U64 = (1 << 64) - 1


def _probe_cbor2() -> None:
    """Fail at import, not on the first frame, if cbor2 cannot decode strictly."""
    try:
        cbor2.loads(b"\x9f\xff", allow_indefinite=False)
    except TypeError as exc:  # an old cbor2 without the strict options
        raise ImportError("appliance.bus needs cbor2 >= 6 (allow_indefinite)") from exc
    except cbor2.CBORDecodeError:
        return
    raise ImportError("cbor2 accepted an indefinite-length array with allow_indefinite=False")


_probe_cbor2()


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128, minimal: 7 bits a byte, least significant first, high bit = more."""
    if not 0 <= value <= _U64:
        raise LocalProtocolError(f"varint out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_frame(
    body: Mapping[str, Any], version: int = PROTOCOL_VERSION, *, max_frame: int | None = None
) -> bytes:
    """One frame holding `body` (a map of the allowed CBOR subset, e.g. `Message.to_wire()`).
    Keys are written in the map's order, so equal dicts built the same way encode the same.
    `version` is not checked, so that tests can build frames a receiver must refuse; with
    `max_frame`, a body longer than that raises `LocalProtocolError`."""
    if not isinstance(body, Mapping):
        raise LocalProtocolError(f"a frame body is a map, not {type(body).__name__}")
    payload = cbor2.dumps(body)
    if max_frame is not None and len(payload) > max_frame:
        raise LocalProtocolError(f"body of {len(payload)} bytes is over max_frame {max_frame}")
    size = len(payload)
    if 0 <= version < 0x80 and size < 0x80:
        head = bytes((version, size))
    else:
        head = encode_varint(version) + encode_varint(size)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + payload + crc.to_bytes(CRC_BYTES, "big")


class _NoTags(Mapping[int, Any]):
    """cbor2's `semantic_decoders`: every tag number maps to a decoder that refuses it
    (tags 28/29 alone could build shared, even cyclic, structures)."""

    def __getitem__(self, tag: int) -> Any:
        def refuse(decoder: Any) -> Any:
            raise BadCbor(f"tag {tag} is not allowed")

        return refuse

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[int]:
        return iter(())


_NO_TAGS = _NoTags()
_SCALARS = frozenset({str, bytes, int, float, bool, type(None)})


def _check_subset(value: Any) -> None:
    """Refuse what cbor2 decodes but the protocol does not allow: undefined, simple values
    and non-text map keys. Depth is already bounded by the decoder's max_depth."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise BadCbor(f"map key of type {type(key).__name__}; keys are text")
            if type(item) not in _SCALARS:
                _check_subset(item)
    elif kind is list:
        for item in value:
            if type(item) not in _SCALARS:
                _check_subset(item)
    elif kind not in _SCALARS:
        raise BadCbor(f"{value!r} is not in the allowed CBOR subset")


def decode_body(data: bytes | memoryview) -> dict[str, Any]:
    """Decode one frame body with a fresh strict decoder: exactly one definite-length map,
    no tags, no duplicate keys, text keys, no trailing bytes. Raises `BadCbor`."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_NO_TAGS,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            max_depth=MAX_DEPTH,
        ).decode()
    except BadCbor:
        raise
    except (cbor2.CBORError, ValueError, TypeError, RecursionError, OverflowError) as exc:
        # CBORDecodeError wraps most; the rest are belts for cbor2's corner cases.
        raise BadCbor(f"{exc.__class__.__name__}: {exc}") from None
    if not isinstance(value, dict):
        raise BadCbor(f"the body is a CBOR {type(value).__name__}, not a map")
    if stream.tell() != len(stream.getbuffer()):
        raise BadCbor(f"{len(stream.getbuffer()) - stream.tell()} bytes after the body's map")
    _check_subset(value)
    return value


def choose_version(
    offered: Iterable[int], supported: Iterable[int] = SUPPORTED_VERSIONS
) -> int | None:
    """Version negotiation: the highest version both sides speak, or None (then the
    endpoint closes with `no_common_version`)."""
    common = set(offered) & set(supported)
    return max(common) if common else None


@dataclass(frozen=True)
class Frame:
    """A good frame: its version, its decoded body and its size on the wire."""

    version: int
    body: dict[str, Any]
    size: int


def _read_varint(
    buf: bytes | bytearray | memoryview,
    pos: int,
    end: int,
    limit: int,
    too_big: type[FrameError],
    what: str,
) -> tuple[int, int] | None:
    """(value, position after it) or None if `buf[pos:end]` ends inside it. Raises `too_big`
    as soon as the value must exceed `limit`, even before its last byte has arrived."""
    value = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= end:
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise BadVarint(f"varint of {i + 1} bytes is not minimal")
            if value > limit:
                raise too_big(f"{what} {value} is over {limit}")
            return value, pos + i + 1
        # A minimal varint with more bytes to come is at least 2**(7 * (i + 1)).
        if 1 << (7 * (i + 1)) > limit:
            raise too_big(f"{what} of {i + 2} or more varint bytes is over {limit}")
    raise BadVarint(f"varint longer than {MAX_VARINT_BYTES} bytes")


class FrameDecoder:
    """Incremental frame decoder for one connection. Feed it whatever the socket gave.

    `versions` is the set of frame versions accepted now; the protocol layer narrows it to
    the negotiated version after the welcome. `bad_crc_run` counts consecutive frames
    with a bad checksum (a good frame resets it); at `max_bad_crc` the `BadCrc` is fatal.
    `failed` holds the fatal error once there is one; feeding after that is a local bug.
    """

    def __init__(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        versions: frozenset[int] = SUPPORTED_VERSIONS,
        max_bad_crc: int = DEFAULT_MAX_BAD_CRC,
    ) -> None:
        if not 1 <= max_frame < 1 << 32:
            raise LocalProtocolError(f"max_frame out of range: {max_frame}")
        if max_bad_crc < 1:
            raise LocalProtocolError(f"max_bad_crc must be at least 1, not {max_bad_crc}")
        self.max_frame = max_frame
        self.versions = versions
        self.max_bad_crc = max_bad_crc
        self.bad_crc_run = 0
        self.failed: FrameError | None = None
        self._buf = bytearray()  # the start of the current frame, never more than one frame
        self._header: tuple[int, int, int] | None = None  # (version, length, header bytes)

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    @property
    def max_buffered(self) -> int:
        return self.max_frame + MAX_HEADER_BYTES + CRC_BYTES

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | FrameError]:
        """Decode what `data` completes. Returns good frames and errors in stream order;
        after a fatal error the rest of `data` is ignored and `failed` is set."""
        if self.failed is not None:
            raise LocalProtocolError(f"feed() after a fatal {self.failed.code}")
        events: list[Frame | FrameError] = []
        view = memoryview(data).cast("B")
        try:
            self._feed(view, events)
        except FrameError as exc:
            self._fail(exc, events)
        return events

    def eof(self) -> Truncated | None:
        """The peer closed its side: a `Truncated` error if a frame was cut off, else None."""
        if self.failed is None and self._buf:
            error = Truncated(f"the stream ended {len(self._buf)} bytes into a frame")
            self._fail(error, [])
            return error
        return None

    def _fail(self, error: FrameError, events: list[Frame | FrameError]) -> None:
        self.failed = error
        self._buf = bytearray()
        self._header = None
        events.append(error)

    def _parse_header(
        self, buf: bytes | bytearray | memoryview, pos: int, end: int
    ) -> tuple[int, int, int] | None:
        got = _read_varint(buf, pos, end, max(self.versions, default=0), BadVersion, "version")
        if got is None:
            return None
        version, after = got
        if version not in self.versions:
            raise BadVersion(f"version {version}; accepted: {sorted(self.versions)}")
        got = _read_varint(buf, after, end, self.max_frame, FrameTooLarge, "length")
        if got is None:
            return None
        length, after = got
        return version, length, after - pos

    def _feed(self, view: memoryview, events: list[Frame | FrameError]) -> None:
        pos, end = 0, len(view)
        versions, max_frame = self.versions, self.max_frame
        while pos < end:
            if not self._buf:
                # Fastest path: a one-byte version and a one- or two-byte length (frames
                # under 16 KiB), the whole frame in this chunk; anything else, or anything
                # wrong, goes through the general path below, which explains it.
                if end - pos >= 3 and view[pos] in versions and view[pos] < 0x80:
                    first = view[pos + 1]
                    if first < 0x80:
                        length, header_bytes = first, 2
                    elif 0 < view[pos + 2] < 0x80:
                        length, header_bytes = (first & 0x7F) | (view[pos + 2] << 7), 3
                    else:
                        length, header_bytes = -1, 0
                    total = header_bytes + length + CRC_BYTES
                    if 0 <= length <= max_frame and end - pos >= total:
                        header = (view[pos], length, header_bytes)
                        self._frame(view[pos : pos + total], header, events)
                        pos += total
                        if self.failed:
                            return
                        continue
                # Fast path: frames wholly inside this chunk are decoded where they lie.
                header = self._parse_header(view, pos, end)
                if header is not None and end - pos >= self._total(header):
                    total = self._total(header)
                    self._frame(view[pos : pos + total], header, events)
                    pos += total
                    if self.failed:
                        return
                    continue
                self._header = header
            if self._header is None:
                # The header is still incomplete: take one byte at a time (20 at most).
                self._buf.append(view[pos])
                pos += 1
                self._header = self._parse_header(self._buf, 0, len(self._buf))
                continue
            total = self._total(self._header)
            take = min(total - len(self._buf), end - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) < total:
                return
            frame, header = self._buf, self._header
            self._buf, self._header = bytearray(), None
            self._frame(memoryview(frame), header, events)
            if self.failed:
                return

    @staticmethod
    def _total(header: tuple[int, int, int]) -> int:
        _, length, header_bytes = header
        return header_bytes + length + CRC_BYTES

    def _frame(
        self, frame: memoryview, header: tuple[int, int, int], events: list[Frame | FrameError]
    ) -> None:
        version, length, header_bytes = header
        end = header_bytes + length
        if zlib.crc32(frame[:end]) != int.from_bytes(frame[end:], "big"):
            self.bad_crc_run += 1
            fatal = self.bad_crc_run >= self.max_bad_crc
            error = BadCrc(
                f"checksum mismatch ({self.bad_crc_run} in a row)",
                consecutive=self.bad_crc_run,
                fatal=fatal,
            )
            if fatal:
                self._fail(error, events)
            else:
                events.append(error)
            return
        self.bad_crc_run = 0
        try:
            body = decode_body(frame[header_bytes:end])
        except BadCbor as exc:
            events.append(exc)
            return
        events.append(Frame(version, body, len(frame)))
