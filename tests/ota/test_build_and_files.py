"""Building from a real directory tree, and verifying or unpacking real bundle files."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from pathlib import Path

import pytest

from ota import ErrorCode, OtaError, unpack_file, verify_file
from ota.build import BuildError, build_bundle, scan_tree
from tests.ota.craft import (
    KEY_A,
    KEY_B,
    NOW,
    OUTSIDER,
    make_bundle,
    manifest_doc,
    payload_of,
    root,
)


def make_tree(base: Path) -> Path:
    tree = base / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "lib" / "deep" / "er").mkdir(parents=True)
    (tree / "empty-dir").mkdir()
    (tree / "bin" / "appliance").write_bytes(b"#!/bin/sh\nexec true\n")
    os.chmod(tree / "bin" / "appliance", 0o700)
    (tree / "lib" / "deep" / "er" / "big.bin").write_bytes(os.urandom(3 * (1 << 20) + 17))
    (tree / "lib" / "empty").write_bytes(b"")
    (tree / "README").write_bytes(b"hello\n")
    os.chmod(tree / "README", 0o600)
    return tree


def build(tree: Path, out: Path, **overrides) -> object:
    options = {
        "product": "edge-box",
        "version": "2.1.0",
        "keys": [KEY_A],
        "hardware": ["board-a"],
        "created": NOW,
        "expires": NOW + 86400,
    }
    options.update(overrides)
    return build_bundle(tree, out, **options)


def test_build_verify_and_unpack_a_real_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    out = tmp_path / "release.ota"
    built = build(tree, out, keys=[KEY_A, KEY_B])
    assert [entry.path for entry in built.files] == [
        "README",
        "bin/appliance",
        "lib/deep/er/big.bin",
        "lib/empty",
    ]
    modes = {entry.path: entry.mode for entry in built.files}
    assert modes["bin/appliance"] == 0o100755 and modes["README"] == 0o100644
    verified = verify_file(out, root(KEY_A, KEY_B, threshold=2), now=NOW, product="edge-box")
    assert verified == built
    unpacked = unpack_file(out, root(KEY_A), tmp_path / "unpacked", now=NOW)
    assert unpacked.digest == built.digest
    for entry in built.files:
        copy = tmp_path / "unpacked" / entry.path
        assert copy.read_bytes() == (tree / entry.path).read_bytes()
        assert stat.S_IMODE(copy.stat().st_mode) == entry.mode & 0o777
    assert not (tmp_path / "unpacked" / "empty-dir").exists()  # directories are not recorded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release.ota", "tree", "unpacked"]


def test_the_same_inputs_build_the_same_bytes(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    build(tree, tmp_path / "one.ota")
    build(tree, tmp_path / "two.ota")
    assert (tmp_path / "one.ota").read_bytes() == (tmp_path / "two.ota").read_bytes()


def special(kind: str, path: Path, tmp_path: Path) -> None:
    if kind == "symlink":
        path.symlink_to("README")
    elif kind == "dangling symlink":
        path.symlink_to("/nonexistent")
    elif kind == "symlinked directory":
        path.symlink_to(tmp_path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "device":
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("cannot create a device node here")
    elif kind == "setuid":
        path.write_bytes(b"x")
        os.chmod(path, 0o4755)
    elif kind == "bad name":
        (path.parent / "new\nline").write_bytes(b"x")


@pytest.mark.parametrize(
    "kind",
    [
        "symlink",
        "dangling symlink",
        "symlinked directory",
        "fifo",
        "socket",
        "device",
        "setuid",
        "bad name",
    ],
)
def test_build_refuses_what_a_bundle_cannot_hold(tmp_path: Path, kind: str) -> None:
    tree = make_tree(tmp_path)
    special(kind, tree / "lib" / "special", tmp_path)
    out = tmp_path / "release.ota"
    with pytest.raises(BuildError) as caught:
        build(tree, out)
    assert "special" in str(caught.value) or "line" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # nothing written


def test_build_refuses_an_empty_tree_and_an_output_inside_the_tree(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError):
        build(tmp_path / "empty", tmp_path / "out.ota")
    tree = make_tree(tmp_path)
    with pytest.raises(BuildError):
        build(tree, tree / "out.ota")


def test_build_refuses_options_a_device_would_refuse(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    for bad in ({"version": "2.1"}, {"product": ""}, {"expires": NOW}, {"keys": []}):
        with pytest.raises(BuildError):
            build(tree, tmp_path / "out.ota", **bad)
    with pytest.raises(BuildError):
        build(tree, tmp_path / "out.ota", keys=[KEY_A, KEY_A])


def test_scan_tree_hashes_every_file(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    for item in scan_tree(tree):
        assert item.sha256 == hashlib.sha256(item.source.read_bytes()).digest()


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bundle.ota"
    path.write_bytes(data)
    return path


def file_code(path: Path, **kwargs) -> ErrorCode:
    with pytest.raises(OtaError) as caught:
        verify_file(path, root(), now=NOW, **kwargs)
    return caught.value.code


def test_verify_file_refuses_bad_files(tmp_path: Path) -> None:
    good = make_bundle()
    assert verify_file(write(tmp_path, good), root(), now=NOW).product == "edge-box"
    assert file_code(write(tmp_path, good[:-1])) == ErrorCode.TRUNCATED
    assert file_code(write(tmp_path, good + b"\n")) == ErrorCode.TRAILING_DATA
    assert file_code(write(tmp_path, good[:30])) == ErrorCode.TRUNCATED
    assert file_code(write(tmp_path, b"")) == ErrorCode.TRUNCATED
    assert file_code(write(tmp_path, b"#!/bin/sh\n")) == ErrorCode.BAD_MAGIC
    assert file_code(write(tmp_path, good), max_bundle_size=len(good) - 1) == "too_large"
    assert file_code(write(tmp_path, make_bundle(keys=[OUTSIDER]))) == ErrorCode.UNKNOWN_KEY
    assert file_code(write(tmp_path, good), installed_version="2.0.0") == ErrorCode.NOT_NEWER


def test_verify_file_finds_a_changed_byte_deep_in_a_large_payload(tmp_path: Path) -> None:
    big = os.urandom(5 * (1 << 20) + 3)
    contents = {"a": (b"small", 0o100644), "big": (big, 0o100644)}
    doc = manifest_doc(contents)
    assert (
        verify_file(
            write(tmp_path, make_bundle(doc, payload=payload_of(contents))), root(), now=NOW
        ).total_size
        == len(big) + 5
    )
    damaged = bytearray(payload_of(contents))
    damaged[4 * (1 << 20)] ^= 0x80
    path = write(tmp_path, make_bundle(doc, payload=bytes(damaged)))
    assert file_code(path) == ErrorCode.PAYLOAD_HASH_MISMATCH
