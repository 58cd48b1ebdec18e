"""The real `ota` command, run as a subprocess: keygen, build, verify, inspect, trust, and
the exit codes (0 ok, 1 refused, 2 usage, 74 I/O, 78 bad key or trust root file)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

OTA = str(Path(sys.executable).with_name("ota"))


def ota(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OTA, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def ok(*args: str | Path, cwd: Path) -> str:
    result = ota(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def work(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "run").write_text("#!/bin/sh\necho 2\n")
    os.chmod(tree / "bin" / "run", 0o755)
    (tree / "data.txt").write_text("payload\n")
    for name in ("rel", "backup", "other"):
        ok("keygen", "--out", name, cwd=tmp_path)
    return tmp_path


def build(work: Path, *extra: str, out: str = "b.ota", version: str = "1.2.0") -> None:
    ok(
        "build",
        "tree",
        "--product",
        "box",
        "--version",
        version,
        "--key",
        "rel.key",
        "--out",
        out,
        *extra,
        cwd=work,
    )


def test_keygen_writes_a_private_secret_and_a_public_key(work: Path) -> None:
    assert stat.S_IMODE((work / "rel.key").stat().st_mode) == 0o600
    secret, public = (json.loads((work / f"rel.{ext}").read_text()) for ext in ("key", "pub"))
    assert public["key_id"] == secret["key_id"] and len(public["key_id"]) == 16
    assert "secret_key" not in public and public["name"] == "rel"
    result = ota("keygen", "--out", "rel", cwd=work)
    assert result.returncode == 74 and "exists" in result.stderr  # never overwrites a key


def test_build_then_verify(work: Path) -> None:
    build(work, "--hardware", "board-a", "--expires-days", "3")
    out = ok("verify", "b.ota", "--pubkey", "rel.pub", cwd=work)
    assert out.startswith("ok: box 1.2.0, 2 files")
    shown = json.loads(ok("verify", "b.ota", "--pubkey", "rel.pub", "--json", cwd=work))
    manifest = shown["manifest"]
    assert shown["verified"] is True and manifest["hardware"] == ["board-a"]
    assert manifest["expires"] - manifest["created"] == 3 * 86400
    assert {f["path"]: f["mode"] for f in manifest["files"]} == {
        "bin/run": "100755",
        "data.txt": "100644",
    }


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--pubkey", "other.pub"], "unknown_key"),
        (["--pubkey", "rel.pub", "--pubkey", "backup.pub", "--threshold", "2"], "below_threshold"),
        (["--pubkey", "rel.pub", "--product", "toaster"], "wrong_product"),
        (["--pubkey", "rel.pub", "--hardware", "board-z"], "incompatible_hardware"),
        (["--pubkey", "rel.pub", "--installed-version", "1.2.0"], "not_newer"),
        (["--pubkey", "rel.pub", "--now", "99999999999"], "expired"),
        (["--pubkey", "rel.pub", "--max-size", "100"], "too_large"),
    ],
)
def test_verify_refusals_exit_1_with_the_code(work: Path, args: list[str], code: str) -> None:
    build(work, "--hardware", "board-a")
    result = ota("verify", "b.ota", *args, cwd=work)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {code}: "), result.stderr


def test_verify_refuses_a_damaged_file(work: Path) -> None:
    build(work)
    data = bytearray((work / "b.ota").read_bytes())
    for name, damaged, code in [
        ("cut.ota", data[:-1], "truncated"),
        ("long.ota", data + b"x", "trailing_data"),
        ("flip.ota", data[:-3] + bytes([data[-3] ^ 1]) + data[-2:], "payload_hash_mismatch"),
        ("magic.ota", b"X" + data[1:], "bad_magic"),
    ]:
        (work / name).write_bytes(damaged)
        result = ota("verify", name, "--pubkey", "rel.pub", cwd=work)
        assert (result.returncode, result.stderr.split(":")[1].strip()) == (1, code)


def test_build_refuses_a_symlink_with_a_clear_message(work: Path) -> None:
    (work / "tree" / "link").symlink_to("data.txt")
    result = ota(
        "build",
        "tree",
        "--product",
        "box",
        "--version",
        "1.0.0",
        "--key",
        "rel.key",
        "--out",
        "b.ota",
        cwd=work,
    )
    assert result.returncode == 1 and "link: is a symbolic link" in result.stderr
    assert not (work / "b.ota").exists()


def test_exit_codes_for_usage_io_and_configuration(work: Path) -> None:
    build(work)
    assert ota("verify", "b.ota", cwd=work).returncode == 2  # no key given
    assert ota("build", "tree", "--product", "box", cwd=work).returncode == 2
    assert ota("frobnicate", cwd=work).returncode == 2
    missing = ota("verify", "missing.ota", "--pubkey", "rel.pub", cwd=work)
    assert missing.returncode == 74 and "missing.ota" in missing.stderr
    bad_key = ota("verify", "b.ota", "--pubkey", "rel.key", cwd=work)  # a secret key file
    assert bad_key.returncode == 78 and "bad configuration" in bad_key.stderr
    (work / "junk.pub").write_text("{")
    assert ota("verify", "b.ota", "--pubkey", "junk.pub", cwd=work).returncode == 78
    assert (
        ota(
            "build",
            "tree",
            "--product",
            "box",
            "--version",
            "1.0.0",
            "--key",
            "rel.pub",
            "--out",
            "c.ota",
            cwd=work,
        ).returncode
        == 78
    )
    bad_version = ota(
        "build",
        "tree",
        "--product",
        "box",
        "--version",
        "1.0",
        "--key",
        "rel.key",
        "--out",
        "c.ota",
        cwd=work,
    )
    assert bad_version.returncode == 1 and "semantic version" in bad_version.stderr


def test_inspect_shows_the_manifest_labelled_unverified(work: Path) -> None:
    ok(
        "build",
        "tree",
        "--product",
        "box",
        "--version",
        "1.2.0",
        "--key",
        "other.key",
        "--out",
        "b.ota",
        cwd=work,
    )
    result = ota("inspect", "b.ota", cwd=work)
    assert result.returncode == 0 and "UNVERIFIED" in result.stderr
    shown = json.loads(result.stdout)
    assert shown["verified"] is False and "NOT VERIFIED" in shown["warning"]
    assert shown["manifest"]["version"] == "1.2.0"
    other = json.loads((work / "other.pub").read_text())
    assert shown["signatures"] == [{"key_id": other["key_id"]}]
    (work / "bad.ota").write_bytes(b"not a bundle")
    bad = ota("inspect", "bad.ota", cwd=work)
    assert bad.returncode == 1 and bad.stderr.startswith("error: bad_magic")


def test_trust_root_init_verify_and_rotation(work: Path) -> None:
    build(work)
    ok("trust", "init", "--pubkey", "rel.pub", "--out", "root.json", cwd=work)
    assert json.loads((work / "root.json").read_text())["serial"] == 1
    assert ok("verify", "b.ota", "--trust-root", "root.json", cwd=work).startswith("ok:")

    # rotate from {rel} to {backup, other} with threshold 2: signed by rel (current) and
    # by backup and other (new)
    ok(
        "trust",
        "init",
        "--pubkey",
        "backup.pub",
        "--pubkey",
        "other.pub",
        "--threshold",
        "2",
        "--serial",
        "2",
        "--out",
        "new-root.json",
        cwd=work,
    )
    ok(
        "trust",
        "rotate",
        "--current",
        "root.json",
        "--new",
        "new-root.json",
        "--key",
        "rel.key",
        "--key",
        "backup.key",
        "--key",
        "other.key",
        "--out",
        "rotation.json",
        cwd=work,
    )
    out = ok(
        "trust",
        "apply",
        "rotation.json",
        "--current",
        "root.json",
        "--out",
        "applied.json",
        cwd=work,
    )
    assert "serial 1 -> 2" in out
    assert (work / "applied.json").read_bytes() == (work / "new-root.json").read_bytes()

    # the old bundle, signed by rel alone, is refused under the new root
    result = ota("verify", "b.ota", "--trust-root", "applied.json", cwd=work)
    assert result.returncode == 1 and result.stderr.startswith("error: unknown_key")
    # a rotation the current root would refuse is never written
    refused = ota(
        "trust",
        "rotate",
        "--current",
        "root.json",
        "--new",
        "new-root.json",
        "--key",
        "backup.key",
        "--key",
        "other.key",
        "--out",
        "r2.json",
        cwd=work,
    )
    assert refused.returncode == 1 and refused.stderr.startswith("error: unknown_key")
    assert not (work / "r2.json").exists()
    # and applying the rotation again on top of the new root is a replay
    replay = ota("trust", "apply", "rotation.json", "--current", "applied.json", cwd=work)
    assert replay.returncode == 1 and replay.stderr.startswith("error: not_newer")


def test_help_everywhere(work: Path) -> None:
    for command in (["--help"], ["build", "--help"], ["trust", "rotate", "--help"]):
        assert ok(*command, cwd=work).startswith("usage: ota")
