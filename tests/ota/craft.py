"""Bundles made to order for the tests, good and bad, and the device's pipeline to check them.

Every bad bundle in the tests is crafted explicitly from these pieces: a manifest *document*
(a dict the test changes before it is encoded), the keys that sign it (or ready-made
signatures), and the payload bytes. `check_bytes` runs the whole sans-IO pipeline a device
runs (HeaderReader, verify_header, PayloadReader) on bytes split at chosen points and
returns the manifest and the files it saw, asserting the event order on the way.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cbor2

from ota import (
    NEED_DATA,
    PAYLOAD_DONE,
    FileData,
    FileDone,
    FileStart,
    HeaderReader,
    Manifest,
    PayloadReader,
    SecretKey,
    TrustRoot,
    verify_header,
)
from ota.header import encode_header
from ota.signatures import MANIFEST_CONTEXT, Signature, sign

KEY_A = SecretKey(bytes([1]) * 32, "release-a")
KEY_B = SecretKey(bytes([2]) * 32, "release-b")
KEY_C = SecretKey(bytes([3]) * 32, "release-c")
OUTSIDER = SecretKey(bytes([9]) * 32, "someone-else")

NOW = 1_700_000_000
PRODUCT = "edge-box"
HARDWARE = "board-a"
INSTALLED = "1.0.0"

FILES: dict[str, tuple[bytes, int]] = {
    "bin/appliance": (b"#!/bin/sh\necho version 2\n", 0o100755),
    "lib/model.bin": (bytes(range(256)) * 5, 0o100644),
    "share/empty": (b"", 0o100644),
    "README": (b"new release\n", 0o100644),
}


def root(*keys: SecretKey, threshold: int = 1, serial: int = 1) -> TrustRoot:
    return TrustRoot(tuple(key.public for key in keys or (KEY_A,)), threshold, serial)


def entry(path: str, data: bytes, mode: int = 0o100644) -> dict[str, Any]:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).digest(), "mode": mode}


def manifest_doc(contents: Mapping[str, tuple[bytes, int]] = FILES, **overrides: Any) -> dict:
    """A valid manifest document for `contents`, with `overrides` applied on top."""
    entries = [entry(path, data, mode) for path, (data, mode) in contents.items()]
    doc = {
        "format": 1,
        "product": PRODUCT,
        "hardware": [HARDWARE, "board-b"],
        "version": "2.0.0",
        "created": NOW - 3600,
        "expires": NOW + 30 * 86400,
        "files": entries,
        "total_size": sum(item["size"] for item in entries),
    }
    doc.update(overrides)
    return doc


def payload_of(files: Mapping[str, tuple[bytes, int]] = FILES) -> bytes:
    return b"".join(data for data, _ in files.values())


def make_bundle(
    doc: Mapping[str, Any] | bytes | None = None,
    *,
    keys: Sequence[SecretKey] = (KEY_A,),
    signatures: Iterable[Signature] | None = None,
    payload: bytes | None = None,
) -> bytes:
    """Preamble, header and payload. `doc` is a manifest document (encoded canonically) or
    raw manifest bytes; `signatures` replaces signing with `keys`; `payload` replaces the
    contents of `FILES`."""
    raw = doc if isinstance(doc, bytes) else cbor2.dumps(doc or manifest_doc(), canonical=True)
    sigs = tuple(signatures) if signatures is not None else sign(MANIFEST_CONTEXT, raw, keys)
    return encode_header(raw, sigs) + (payload_of() if payload is None else payload)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets (sorted, deduplicated, clipped to its length)."""
    points = sorted({0, len(data), *(min(max(cut, 0), len(data)) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def check_bytes(
    chunks: Iterable[bytes] | bytes,
    trust_root: TrustRoot | None = None,
    **policy: Any,
) -> tuple[Manifest, dict[str, bytes]]:
    """The device's pipeline over `chunks`; the verified manifest and every file's bytes.
    Raises what the pipeline raises (`OtaError` for a bad bundle)."""
    if isinstance(chunks, bytes):
        chunks = [chunks]
    settings = {
        "now": NOW,
        "product": PRODUCT,
        "hardware": HARDWARE,
        "installed_version": INSTALLED,
    }
    settings.update(policy)
    header = HeaderReader()
    payload: PayloadReader | None = None
    files: dict[str, bytes] = {}
    current: bytearray | None = None

    def consume(events: Iterable[Any]) -> None:
        nonlocal current
        for event in events:
            if isinstance(event, FileStart):
                assert current is None and event.entry.path not in files
                current = bytearray()
            elif isinstance(event, FileData):
                assert current is not None and len(event.data) > 0
                current += event.data
            elif isinstance(event, FileDone):
                assert current is not None and len(current) == event.entry.size
                files[event.entry.path] = bytes(current)
                current = None
            else:
                assert event is PAYLOAD_DONE, event
                assert event is not NEED_DATA

    for chunk in chunks:
        rest = memoryview(chunk)
        if payload is None:
            used = header.feed(rest)
            rest = rest[used:]
            if header.header is None:
                assert not rest
                continue
            manifest = verify_header(header.header, trust_root or root(), **settings)
            payload = PayloadReader(manifest)
        consume(payload.feed(rest))
    if payload is None:
        header.receive_eof()
        raise AssertionError("receive_eof accepted an incomplete header")
    consume(payload.finish())
    return payload.manifest, files
