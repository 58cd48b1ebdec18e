"""The manifest: what a bundle claims to hold, as signed. Sans-IO.

`parse_manifest(raw)` turns the exact manifest bytes from a bundle header into a frozen
`Manifest`, or raises `OtaError`. It is only ever called on bytes whose signatures have
already been checked (see `ota.verify`), and it never re-encodes them: `Manifest.raw` is
the input, and `Manifest.digest` (its sha256) names the bundle.

Checks run in passes, so a manifest with several faults gets the same code whatever the
order of its entries: the schema (`bad_manifest`: exact key sets, types, ranges, format
version, a parseable semantic version, `expires` after `created`, at least one file), then
every path (`bad_path`), then every mode (`bad_mode`), then the sizes (`size_mismatch`).

Paths are relative POSIX paths in normal form: components separated by single `/`, none
empty, `.` or `..`, no leading or trailing `/`, no backslash or control character (C0,
DEL, C1), at most 255 UTF-8 bytes a component and 4096 a path; no two entries equal, and no
entry inside another (`a` and `a/b`). Modes are `st_mode` values including the file-type
bits, and only two are allowed: 0o100644 (regular file) and 0o100755 (regular executable).
Symlinks, devices, FIFOs, sockets, directories, setuid/setgid/sticky bits and group- or
world-writable files are all refused (`bad_mode`), so the installer never has to decide
what such an entry would mean.

`encode_manifest(...)` is the builder's side: it validates its input the same way (by
parsing what it wrote) and returns canonical CBOR.
"""

from __future__ import annotations

import hashlib
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ota.cbor import CborError, decode_map, encode_map
from ota.errors import ErrorCode, OtaError
from ota.version import Version

__all__ = [
    "ANY_HARDWARE",
    "EXECUTABLE_MODE",
    "FORMAT_VERSION",
    "REGULAR_MODE",
    "Manifest",
    "PayloadEntry",
    "check_mode",
    "check_path",
    "encode_manifest",
    "manifest_document",
    "parse_manifest",
]

FORMAT_VERSION = 1
REGULAR_MODE = stat.S_IFREG | 0o644
EXECUTABLE_MODE = stat.S_IFREG | 0o755
ALLOWED_MODES = frozenset({REGULAR_MODE, EXECUTABLE_MODE})
ANY_HARDWARE = "*"

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_LABEL_LENGTH = 128
MAX_HARDWARE_ENTRIES = 64
MAX_SIZE = (1 << 63) - 1
SHA256_BYTES = 32

_MANIFEST_KEYS = frozenset(
    {"format", "product", "hardware", "version", "created", "expires", "files", "total_size"}
)
_ENTRY_KEYS = frozenset({"path", "size", "sha256", "mode"})


@dataclass(frozen=True)
class PayloadEntry:
    """One payload file: where it goes, how long it is, its sha256, its mode, and where its
    bytes start in the payload (`offset`, the sum of the sizes before it)."""

    path: str
    size: int
    sha256: bytes = field(repr=False)
    mode: int
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256.hex(),
            "mode": f"{self.mode:o}",
        }


@dataclass(frozen=True)
class Manifest:
    """A manifest that passed `parse_manifest`. Whether it is *trusted* depends on how it
    was obtained: `ota.verify.verify_header` returns one only after the signatures held."""

    format: int
    product: str
    hardware: tuple[str, ...]
    version: Version
    created: int
    expires: int
    files: tuple[PayloadEntry, ...]
    total_size: int
    raw: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        """sha256 of the manifest bytes, hex: identifies the bundle (and all it holds)."""
        return hashlib.sha256(self.raw).hexdigest()

    def supports_hardware(self, hardware: str) -> bool:
        return ANY_HARDWARE in self.hardware or hardware in self.hardware

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "product": self.product,
            "hardware": list(self.hardware),
            "version": str(self.version),
            "created": self.created,
            "expires": self.expires,
            "total_size": self.total_size,
            "files": [entry.to_json() for entry in self.files],
            "digest": self.digest,
        }


def _refuse(detail: str) -> OtaError:
    return OtaError(ErrorCode.BAD_MANIFEST, detail)


def _int(value: Any, name: str, low: int = 0, high: int = MAX_SIZE) -> int:
    if type(value) is not int:
        raise _refuse(f"{name} is a {type(value).__name__}, not an integer")
    if not low <= value <= high:
        raise _refuse(f"{name} {value} is out of range [{low}, {high}]")
    return value


def _label(value: Any, name: str) -> str:
    if type(value) is not str:
        raise _refuse(f"{name} is a {type(value).__name__}, not text")
    if not 1 <= len(value) <= MAX_LABEL_LENGTH:
        raise _refuse(f"{name} must be 1 to {MAX_LABEL_LENGTH} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise _refuse(f"{name} {value!r} holds a control character")
    return value


def _keys(doc: dict[str, Any], expected: frozenset[str], where: str) -> None:
    if doc.keys() != expected:
        missing = sorted(expected - doc.keys())
        unknown = sorted(doc.keys() - expected)
        raise _refuse(f"{where}: missing {missing}, unknown {unknown}")


def check_path(path: str) -> str | None:
    """Why `path` is not an acceptable payload path, or None when it is."""
    if not path:
        return "empty path"
    if path.startswith("/"):
        return "absolute path"
    if "\\" in path or any(unicodedata.category(ch) == "Cc" for ch in path):
        return "control character or backslash in path"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "path is not valid UTF-8"
    if len(encoded) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"path component {part!r} (paths are relative and normalised)"
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            return f"path component longer than {MAX_COMPONENT_BYTES} bytes"
    return None


def check_mode(mode: int) -> str | None:
    """Why `mode` is not an acceptable payload mode, or None when it is."""
    if mode in ALLOWED_MODES:
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if not stat.S_ISREG(mode):
        return f"not a regular file (type bits {stat.S_IFMT(mode):o})"
    if mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
        return "setuid, setgid or sticky bit"
    return f"permissions {stat.S_IMODE(mode):o} (only 644 and 755 are allowed)"


def _parse_entries(raw_files: Any) -> list[tuple[str, int, bytes, int]]:
    if type(raw_files) is not list:
        raise _refuse("files is not an array")
    if not raw_files:
        raise _refuse("files is empty")
    entries = []
    for index, item in enumerate(raw_files):
        where = f"files[{index}]"
        if type(item) is not dict:
            raise _refuse(f"{where} is not a map")
        _keys(item, _ENTRY_KEYS, where)
        path, digest = item["path"], item["sha256"]
        if type(path) is not str:
            raise _refuse(f"{where}.path is not text")
        if type(digest) is not bytes or len(digest) != SHA256_BYTES:
            raise _refuse(f"{where}.sha256 is not {SHA256_BYTES} bytes")
        size = _int(item["size"], f"{where}.size")
        mode = _int(item["mode"], f"{where}.mode", high=0xFFFFFFFF)
        entries.append((path, size, digest, mode))
    return entries


def _check_paths(paths: Sequence[str]) -> None:
    seen: set[str] = set()
    for path in paths:
        problem = check_path(path)
        if problem is not None:
            raise OtaError(ErrorCode.BAD_PATH, f"{path!r}: {problem}")
        if path in seen:
            raise OtaError(ErrorCode.BAD_PATH, f"{path!r}: listed twice")
        seen.add(path)
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in seen:
                raise OtaError(ErrorCode.BAD_PATH, f"{path!r}: inside file {parent!r}")


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in `raw`, checked; `OtaError` with `bad_manifest`, `bad_path`,
    `bad_mode` or `size_mismatch` otherwise."""
    try:
        doc = decode_map(raw)
    except CborError as exc:
        raise _refuse(str(exc)) from None
    if doc.get("format") != FORMAT_VERSION or type(doc.get("format")) is not int:
        raise _refuse(f"format {doc.get('format')!r} is not supported (expected {FORMAT_VERSION})")
    _keys(doc, _MANIFEST_KEYS, "manifest")
    product = _label(doc["product"], "product")
    hardware = doc["hardware"]
    if type(hardware) is not list or not 1 <= len(hardware) <= MAX_HARDWARE_ENTRIES:
        raise _refuse(f"hardware must be an array of 1 to {MAX_HARDWARE_ENTRIES} names")
    hardware = tuple(_label(name, "hardware name") for name in hardware)
    if type(doc["version"]) is not str:
        raise _refuse("version is not text")
    try:
        version = Version.parse(doc["version"])
    except ValueError as exc:
        raise _refuse(str(exc)) from None
    created = _int(doc["created"], "created")
    expires = _int(doc["expires"], "expires")
    if expires <= created:
        raise _refuse(f"expires ({expires}) is not after created ({created})")
    total_size = _int(doc["total_size"], "total_size")
    entries = _parse_entries(doc["files"])

    _check_paths([path for path, _, _, _ in entries])
    for path, _, _, mode in entries:
        problem = check_mode(mode)
        if problem is not None:
            raise OtaError(ErrorCode.BAD_MODE, f"{path!r}: mode {mode:o}: {problem}")
    declared = sum(size for _, size, _, _ in entries)
    if declared != total_size:
        raise OtaError(
            ErrorCode.SIZE_MISMATCH,
            f"the files' sizes add up to {declared} bytes, total_size says {total_size}",
        )

    files, offset = [], 0
    for path, size, digest, mode in entries:
        files.append(PayloadEntry(path, size, digest, mode, offset))
        offset += size
    return Manifest(
        FORMAT_VERSION, product, hardware, version, created, expires, tuple(files), offset, raw
    )


def manifest_document(
    *,
    product: str,
    version: str,
    hardware: Iterable[str],
    created: int,
    expires: int,
    files: Iterable[tuple[str, int, bytes, int]],
) -> dict[str, Any]:
    """The manifest as a plain map (before encoding), from `(path, size, sha256, mode)`."""
    entries = [
        {"path": path, "size": size, "sha256": digest, "mode": mode}
        for path, size, digest, mode in files
    ]
    return {
        "format": FORMAT_VERSION,
        "product": product,
        "hardware": list(hardware),
        "version": version,
        "created": created,
        "expires": expires,
        "files": entries,
        "total_size": sum(entry["size"] for entry in entries),
    }


def encode_manifest(**fields: Any) -> bytes:
    """Canonical manifest bytes from `manifest_document`'s fields; `OtaError` if they
    would not pass `parse_manifest` (the builder never writes what a device refuses)."""
    raw = encode_map(manifest_document(**fields))
    parse_manifest(raw)
    return raw
