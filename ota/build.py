"""Packing a directory tree into a signed bundle (the operator's side; blocking I/O).

`build_bundle(source, out, product=..., version=..., keys=..., ...)` makes two streaming
passes over the tree, each reading 1 MiB at a time, so memory stays flat whatever the
tree's size:

1. `scan_tree(source)` walks it (sorted, not following links) and hashes every file; it
   refuses symlinks, devices, FIFOs, sockets, setuid/setgid/sticky files and names that are
   not valid payload paths, with a message naming the file (`BuildError`);
2. the manifest is encoded and signed, and the header and then every file are written to a
   temporary file next to `out`; each file is hashed again while it is copied, and a file
   that changed since the scan aborts the build, so the bundle never disagrees with its
   own manifest. The temporary file is fsynced and renamed onto `out`.

Directories are not recorded (a file's path implies them; empty directories are dropped).
Modes are normalised: any execute bit gives 0o100755, otherwise 0o100644.

`bundle_bytes(files, ...)` is the same in memory, for tests and examples.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ota.errors import OtaError, OtaMisuse
from ota.header import encode_header
from ota.keys import SecretKey
from ota.manifest import (
    ANY_HARDWARE,
    EXECUTABLE_MODE,
    REGULAR_MODE,
    Manifest,
    check_path,
    encode_manifest,
    parse_manifest,
)
from ota.signatures import MANIFEST_CONTEXT, sign

__all__ = [
    "DAY",
    "BuildError",
    "SourceFile",
    "build_bundle",
    "bundle_bytes",
    "scan_tree",
    "sign_manifest",
]

CHUNK_SIZE = 1 << 20
DAY = 86400


class BuildError(OtaMisuse):
    """The source tree or the build options cannot make a valid bundle."""


@dataclass(frozen=True)
class SourceFile:
    """A file found by `scan_tree`: its payload path, where it is, size, sha256, mode."""

    path: str
    source: Path
    size: int
    sha256: bytes
    mode: int


def _payload_mode(st: os.stat_result, where: Path) -> int:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        raise BuildError(f"{where}: is a symbolic link; bundles hold regular files only")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise BuildError(f"{where}: is a device; bundles hold regular files only")
    if not stat.S_ISREG(mode):
        raise BuildError(f"{where}: is not a regular file (FIFO or socket)")
    if mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
        raise BuildError(f"{where}: has the setuid, setgid or sticky bit")
    return EXECUTABLE_MODE if mode & 0o111 else REGULAR_MODE


def _hash_file(path: Path, buffer: bytearray) -> tuple[int, bytes]:
    hasher = hashlib.sha256()
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as stream:
        while count := stream.readinto(buffer):
            hasher.update(view[:count])
            size += count
    return size, hasher.digest()


def scan_tree(source: str | os.PathLike[str]) -> list[SourceFile]:
    """Every regular file under `source`, sorted by payload path, hashed."""
    root = Path(source)
    if not root.is_dir() or root.is_symlink():
        raise BuildError(f"{root}: not a directory")
    found: list[SourceFile] = []
    buffer = bytearray(CHUNK_SIZE)

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            listed = sorted(entries, key=lambda entry: entry.name)
        for entry in listed:
            where = Path(entry.path)
            path = prefix + entry.name
            problem = check_path(path)
            if problem is not None:
                raise BuildError(f"{where}: cannot be a payload path ({problem})")
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                walk(where, path + "/")
                continue
            mode = _payload_mode(st, where)
            size, digest = _hash_file(where, buffer)
            found.append(SourceFile(path, where, size, digest, mode))

    walk(root, "")
    if not found:
        raise BuildError(f"{root}: holds no files")
    found.sort(key=lambda item: item.path)
    return found


def sign_manifest(raw: bytes, keys: Sequence[SecretKey]) -> bytes:
    """Preamble and header for manifest bytes `raw`, signed by every key in `keys`."""
    if not keys:
        raise BuildError("at least one signing key is needed")
    if len({key.key_id for key in keys}) != len(keys):
        raise BuildError("the same signing key is given twice")
    return encode_header(raw, sign(MANIFEST_CONTEXT, raw, keys))


def _manifest(
    files: Iterable[tuple[str, int, bytes, int]],
    *,
    product: str,
    version: str,
    hardware: Sequence[str],
    created: int,
    expires: int,
) -> bytes:
    try:
        return encode_manifest(
            product=product,
            version=version,
            hardware=list(hardware) or [ANY_HARDWARE],
            created=created,
            expires=expires,
            files=files,
        )
    except OtaError as exc:
        raise BuildError(f"the manifest would be refused: {exc}") from None


def bundle_bytes(
    files: Mapping[str, bytes | tuple[bytes, int]],
    *,
    product: str,
    version: str,
    keys: Sequence[SecretKey],
    hardware: Sequence[str] = (ANY_HARDWARE,),
    created: int,
    expires: int,
) -> bytes:
    """A whole bundle in memory. `files` maps payload paths to contents, or to
    `(contents, mode)`; files go in the mapping's order."""
    items = []
    for path, value in files.items():
        data, mode = value if isinstance(value, tuple) else (value, REGULAR_MODE)
        items.append((path, data, mode))
    raw = _manifest(
        [(path, len(data), hashlib.sha256(data).digest(), mode) for path, data, mode in items],
        product=product,
        version=version,
        hardware=hardware,
        created=created,
        expires=expires,
    )
    return sign_manifest(raw, keys) + b"".join(data for _, data, _ in items)


def _copy(item: SourceFile, sink: BinaryIO, buffer: bytearray) -> None:
    hasher = hashlib.sha256()
    view = memoryview(buffer)
    size = 0
    with open(item.source, "rb", buffering=0) as stream:
        while (count := stream.readinto(buffer)) and size <= item.size:
            chunk = view[: min(count, item.size - size + 1)]
            hasher.update(chunk)
            sink.write(chunk)
            size += len(chunk)
    if size != item.size or hasher.digest() != item.sha256:
        raise BuildError(f"{item.source}: changed while the bundle was being built")


def build_bundle(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    product: str,
    version: str,
    keys: Sequence[SecretKey],
    hardware: Sequence[str] = (ANY_HARDWARE,),
    created: int,
    expires: int,
) -> Manifest:
    """Pack the tree at `source` into the bundle file `out` (atomically replaced)."""
    out = Path(out)
    root = Path(source).resolve()
    if out.resolve().is_relative_to(root):
        raise BuildError(f"{out}: the bundle cannot be written inside the tree it packs")
    files = scan_tree(root)
    raw = _manifest(
        [(item.path, item.size, item.sha256, item.mode) for item in files],
        product=product,
        version=version,
        hardware=hardware,
        created=created,
        expires=expires,
    )
    head = sign_manifest(raw, keys)
    buffer = bytearray(CHUNK_SIZE)
    fd, temp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as sink:
            sink.write(head)
            for item in files:
                _copy(item, sink, buffer)
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return parse_manifest(raw)
