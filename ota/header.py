"""The front of a bundle: magic, version, header length, header. Sans-IO.

    offset  size  field
    0       14    magic  b"APPLIANCE-OTA\\n"
    14      1     container version, 0x01
    15      4     header length N, unsigned big-endian, 1 <= N <= max (1 MiB by default)
    19      N     header: one CBOR map {"manifest": bytes, "signatures": [...]}
    19 + N  ...   payload (ota.payload)

`HeaderReader` is fed bytes split anywhere and says how many more it needs
(`bytes_needed`), so a caller reading a file asks for exactly that and a caller handed
network chunks passes whatever came. It checks each byte of the magic as it arrives
(`bad_magic` on the first wrong one), and the length as soon as its four bytes are in,
**before** buffering any of the header (`header_too_large`). It never holds more than
19 + max bytes. `feed` returns how many bytes of the chunk it used; once `header` is set,
the rest of that chunk is the start of the payload. `receive_eof()` says the input ended
(`truncated` if the header is not complete).

The header map has exactly two keys: `manifest`, the manifest's CBOR bytes *as signed*
(a byte string, kept as is: never decoded and re-encoded before the signatures are
checked), and `signatures`, an array of at most 16 `{"key_id": text (16 lowercase hex),
"signature": bytes (64)}`. Anything else is `bad_header`. The manifest is not parsed
here: `ota.verify` checks the signatures first.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from ota.cbor import CborError, decode_map, encode_map
from ota.errors import ErrorCode, OtaError, OtaMisuse
from ota.signatures import SIGNATURE_BYTES, Signature

__all__ = [
    "CONTAINER_VERSION",
    "MAGIC",
    "MAX_HEADER_SIZE",
    "MAX_SIGNATURES",
    "PREAMBLE_SIZE",
    "BundleHeader",
    "HeaderReader",
    "encode_header",
    "parse_header",
]

MAGIC = b"APPLIANCE-OTA\n"
CONTAINER_VERSION = 1
_LENGTH = struct.Struct(">I")
PREAMBLE_SIZE = len(MAGIC) + 1 + _LENGTH.size
MAX_HEADER_SIZE = 1 << 20
MAX_SIGNATURES = 16
_KEY_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class BundleHeader:
    """A parsed, *unverified* header. `size` is the offset of the first payload byte."""

    manifest: bytes = field(repr=False)
    signatures: tuple[Signature, ...]
    size: int


def encode_header(manifest: bytes, signatures: Sequence[Signature]) -> bytes:
    """Preamble and header for `manifest` (its exact bytes) and `signatures`."""
    body = encode_map(
        {
            "manifest": bytes(manifest),
            "signatures": [
                {"key_id": sig.key_id, "signature": sig.signature} for sig in signatures
            ],
        }
    )
    if len(body) > MAX_HEADER_SIZE:
        raise OtaMisuse(f"header of {len(body)} bytes is over {MAX_HEADER_SIZE}")
    return MAGIC + bytes([CONTAINER_VERSION]) + _LENGTH.pack(len(body)) + body


def _bad(detail: str) -> OtaError:
    return OtaError(ErrorCode.BAD_HEADER, detail)


def parse_header(body: bytes | memoryview, size: int | None = None) -> BundleHeader:
    """The header map in `body` (the N bytes after the preamble); `bad_header` otherwise."""
    try:
        doc = decode_map(body)
    except CborError as exc:
        raise _bad(str(exc)) from None
    if doc.keys() != {"manifest", "signatures"}:
        raise _bad(f"header keys are {sorted(doc)}, expected ['manifest', 'signatures']")
    manifest, raw_signatures = doc["manifest"], doc["signatures"]
    if type(manifest) is not bytes or not manifest:
        raise _bad("manifest is not a non-empty byte string")
    if type(raw_signatures) is not list or len(raw_signatures) > MAX_SIGNATURES:
        raise _bad(f"signatures is not an array of at most {MAX_SIGNATURES}")
    signatures = []
    for index, item in enumerate(raw_signatures):
        if type(item) is not dict or item.keys() != {"key_id", "signature"}:
            raise _bad(f"signatures[{index}] is not a {{key_id, signature}} map")
        key_id, signature = item["key_id"], item["signature"]
        if type(key_id) is not str or not _KEY_ID.fullmatch(key_id):
            raise _bad(f"signatures[{index}].key_id is not 16 lowercase hex digits")
        if type(signature) is not bytes or len(signature) != SIGNATURE_BYTES:
            raise _bad(f"signatures[{index}].signature is not {SIGNATURE_BYTES} bytes")
        signatures.append(Signature(key_id, signature))
    return BundleHeader(
        manifest, tuple(signatures), PREAMBLE_SIZE + len(body) if size is None else size
    )


class HeaderReader:
    """Reads the preamble and header from bytes fed in pieces (see the module docstring)."""

    def __init__(self, max_header_size: int = MAX_HEADER_SIZE) -> None:
        if not 1 <= max_header_size <= 0xFFFFFFFF:
            raise OtaMisuse(f"max_header_size {max_header_size} out of range")
        self.max_header_size = max_header_size
        self._buffer = bytearray()
        self._length: int | None = None
        self.header: BundleHeader | None = None
        self._failed = False

    @property
    def done(self) -> bool:
        return self.header is not None

    @property
    def bytes_needed(self) -> int:
        """How many more bytes the reader needs to make progress (0 once done)."""
        if self.header is not None:
            return 0
        if self._length is None:
            return PREAMBLE_SIZE - len(self._buffer)
        return PREAMBLE_SIZE + self._length - len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Take what the header needs from `data`; return how many bytes were used.
        Raises `OtaError` (`bad_magic`, `header_too_large`, `bad_header`); after that the
        reader is spent and further calls raise `OtaMisuse`."""
        if self._failed:
            raise OtaMisuse("the header reader already refused this bundle")
        try:
            return self._feed(memoryview(data).cast("B"))
        except OtaError:
            self._failed = True
            self._buffer = bytearray()
            raise

    def receive_eof(self) -> None:
        """The input has ended: `truncated` unless the header is complete."""
        if self.header is None:
            self._failed = True
            raise OtaError(
                ErrorCode.TRUNCATED,
                f"the bundle ends inside its header ({self.bytes_needed} more bytes expected)",
            )

    def _feed(self, view: memoryview) -> int:
        used = 0
        while self.header is None and used < len(view):
            take = min(self.bytes_needed, len(view) - used)
            start = len(self._buffer)
            self._buffer += view[used : used + take]
            used += take
            if self._length is None:
                self._check_preamble(start)
            if self._length is not None and self.bytes_needed == 0:
                self.header = parse_header(memoryview(self._buffer)[PREAMBLE_SIZE:])
                self._buffer = bytearray()
        return used

    def _check_preamble(self, start: int) -> None:
        buffer = self._buffer
        magic_end = min(len(buffer), len(MAGIC))
        if start < magic_end and buffer[start:magic_end] != MAGIC[start:magic_end]:
            raise OtaError(ErrorCode.BAD_MAGIC, "not an appliance OTA bundle")
        if len(buffer) > len(MAGIC) and buffer[len(MAGIC)] != CONTAINER_VERSION:
            raise OtaError(
                ErrorCode.BAD_MAGIC,
                f"container version {buffer[len(MAGIC)]} is not supported "
                f"(this reader knows {CONTAINER_VERSION})",
            )
        if len(buffer) < PREAMBLE_SIZE:
            return
        (length,) = _LENGTH.unpack_from(buffer, len(MAGIC) + 1)
        if length == 0:
            raise OtaError(ErrorCode.BAD_HEADER, "header length is 0")
        if length > self.max_header_size:
            raise OtaError(
                ErrorCode.HEADER_TOO_LARGE,
                f"header length {length} is over the limit of {self.max_header_size} bytes",
            )
        self._length = length
