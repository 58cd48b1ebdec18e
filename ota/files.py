"""Bundles on disk: the blocking I/O edge around the sans-IO readers, for tools and benches.

`read_header(stream, ...)` reads exactly the bytes the `HeaderReader` asks for.
`verify_file(path, trust_root, ...)` checks a whole bundle file: header and signatures,
the manifest against the given policy (see `ota.verify.verify_header`), then every payload
byte, in one pass with 1 MiB `readinto` calls on one reused buffer (no per-chunk
allocation, no copy: the payload reader hashes memoryviews of that buffer). The file's size
is compared with what the manifest declares before any payload byte is hashed, so a
truncated or padded bundle fails at once; the streaming check still stands behind it.
`unpack_file(path, trust_root, dest, ...)` does the same and writes the files under `dest`
(a new directory), for tests and for operators who want to look inside a verified bundle.

The device does not use this module: it drives the same readers from its upload stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from ota.errors import ErrorCode, OtaError
from ota.header import MAX_HEADER_SIZE, BundleHeader, HeaderReader
from ota.manifest import Manifest
from ota.payload import FileData, FileDone, FileStart, PayloadReader
from ota.trust import TrustRoot
from ota.verify import verify_header
from ota.version import Version

__all__ = ["CHUNK_SIZE", "read_header", "unpack_file", "verify_file"]

CHUNK_SIZE = 1 << 20


def read_header(stream: BinaryIO, max_header_size: int = MAX_HEADER_SIZE) -> BundleHeader:
    """The (unverified) header at the stream's position; the stream is left at the payload."""
    reader = HeaderReader(max_header_size)
    while reader.header is None:
        data = stream.read(reader.bytes_needed)
        if not data:
            reader.receive_eof()
        reader.feed(data)
    return reader.header


def _open_verified(
    stream: BinaryIO,
    trust_root: TrustRoot,
    *,
    now: float | None,
    product: str | None,
    hardware: str | None,
    installed_version: str | Version | None,
    denylist: Iterable[str | Version],
    max_bundle_size: int | None,
) -> Manifest:
    size = os.fstat(stream.fileno()).st_size
    if max_bundle_size is not None and size > max_bundle_size:
        raise OtaError(
            ErrorCode.TOO_LARGE, f"the file is {size} bytes, the limit is {max_bundle_size}"
        )
    header = read_header(stream)
    manifest = verify_header(
        header,
        trust_root,
        now=time.time() if now is None else now,
        product=product,
        hardware=hardware,
        installed_version=installed_version,
        denylist=denylist,
        max_bundle_size=max_bundle_size,
    )
    expected = header.size + manifest.total_size
    if size < expected:
        raise OtaError(ErrorCode.TRUNCATED, f"the file is {size} bytes, the bundle {expected}")
    if size > expected:
        raise OtaError(
            ErrorCode.TRAILING_DATA, f"the file is {size} bytes, the bundle only {expected}"
        )
    return manifest


def verify_file(
    path: str | os.PathLike[str],
    trust_root: TrustRoot,
    *,
    now: float | None = None,
    product: str | None = None,
    hardware: str | None = None,
    installed_version: str | Version | None = None,
    denylist: Iterable[str | Version] = (),
    max_bundle_size: int | None = None,
) -> Manifest:
    """Verify the bundle file at `path` completely; its manifest, or `OtaError`.
    `now` defaults to the clock; `None` for product, hardware and installed_version skips
    those checks (an offline check by the operator)."""
    with open(path, "rb", buffering=0) as stream:
        manifest = _open_verified(
            stream,
            trust_root,
            now=now,
            product=product,
            hardware=hardware,
            installed_version=installed_version,
            denylist=denylist,
            max_bundle_size=max_bundle_size,
        )
        reader = PayloadReader(manifest)
        buffer = bytearray(CHUNK_SIZE)
        view = memoryview(buffer)
        while count := stream.readinto(buffer):
            for _ in reader.feed(view[:count]):
                pass
        for _ in reader.finish():
            pass
    return manifest


def unpack_file(
    path: str | os.PathLike[str],
    trust_root: TrustRoot,
    dest: str | os.PathLike[str],
    *,
    now: float | None = None,
    product: str | None = None,
    hardware: str | None = None,
    installed_version: str | Version | None = None,
) -> Manifest:
    """Verify the bundle at `path` and write its files under the new directory `dest`.
    On `OtaError`, what was written so far is left in `dest`, which must then be discarded
    (a file is only complete and checked once its `FileDone` was seen)."""
    dest = Path(dest)
    dest.mkdir()
    with open(path, "rb", buffering=0) as stream:
        manifest = _open_verified(
            stream,
            trust_root,
            now=now,
            product=product,
            hardware=hardware,
            installed_version=installed_version,
            denylist=(),
            max_bundle_size=None,
        )
        reader = PayloadReader(manifest)
        buffer = bytearray(CHUNK_SIZE)
        view = memoryview(buffer)
        out: BinaryIO | None = None
        try:
            while True:
                count = stream.readinto(buffer)
                events = reader.feed(view[:count]) if count else reader.finish()
                for event in events:
                    if isinstance(event, FileStart):
                        target = dest / event.entry.path
                        target.parent.mkdir(parents=True, exist_ok=True)
                        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                        out = os.fdopen(fd, "wb")
                    elif isinstance(event, FileData):
                        assert out is not None
                        out.write(event.data)
                    elif isinstance(event, FileDone):
                        assert out is not None
                        out.close()
                        out = None
                        os.chmod(dest / event.entry.path, event.entry.mode & 0o777)
                if not count:
                    break
        finally:
            if out is not None:
                out.close()
    return manifest
