"""verify_header and the manifest checks: one crafted bad bundle per refusal, and the order
in which the checks run (signatures before anything in the manifest is looked at)."""

from __future__ import annotations

import hashlib

import cbor2
import pytest

from ota import ErrorCode, HeaderReader, OtaError, Version, verify_header
from ota.signatures import MANIFEST_CONTEXT, Signature, sign
from tests.ota.craft import (
    FILES,
    HARDWARE,
    INSTALLED,
    KEY_A,
    KEY_B,
    KEY_C,
    NOW,
    OUTSIDER,
    PRODUCT,
    check_bytes,
    entry,
    make_bundle,
    manifest_doc,
    payload_of,
    root,
)


def code_of(bundle: bytes, trust_root=None, **policy) -> ErrorCode:
    with pytest.raises(OtaError) as caught:
        check_bytes(bundle, trust_root, **policy)
    return caught.value.code


def header_of(bundle: bytes):
    reader = HeaderReader()
    reader.feed(bundle)
    assert reader.header is not None
    return reader.header


def test_a_good_bundle_verifies_and_yields_every_file() -> None:
    manifest, files = check_bytes(make_bundle())
    assert manifest.product == PRODUCT and manifest.version == Version.parse("2.0.0")
    assert files == {path: data for path, (data, _) in FILES.items()}
    assert [item.path for item in manifest.files] == list(FILES)
    assert manifest.files[0].mode == 0o100755
    assert manifest.digest == hashlib.sha256(header_of(make_bundle()).manifest).hexdigest()


# -- signatures ---------------------------------------------------------------------------


def test_unsigned() -> None:
    assert code_of(make_bundle(signatures=[])) == ErrorCode.UNSIGNED == "unsigned"


def test_signed_only_by_an_unknown_key() -> None:
    assert code_of(make_bundle(keys=[OUTSIDER])) == ErrorCode.UNKNOWN_KEY


def test_a_signature_claiming_a_trusted_key_id_but_made_by_another_key() -> None:
    raw = cbor2.dumps(manifest_doc(), canonical=True)
    forged = Signature(KEY_A.key_id, OUTSIDER.sign(MANIFEST_CONTEXT + raw))
    assert code_of(make_bundle(raw, signatures=[forged])) == ErrorCode.BAD_SIGNATURE


def test_manifest_changed_after_signing() -> None:
    raw = cbor2.dumps(manifest_doc(), canonical=True)
    signatures = sign(MANIFEST_CONTEXT, raw, [KEY_A])
    changed = cbor2.dumps(manifest_doc(version="9.9.9"), canonical=True)
    assert code_of(make_bundle(changed, signatures=signatures)) == ErrorCode.BAD_SIGNATURE


def test_a_manifest_signature_is_over_the_context_not_the_bare_bytes() -> None:
    raw = cbor2.dumps(manifest_doc(), canonical=True)
    bare = Signature(KEY_A.key_id, KEY_A.sign(raw))
    assert code_of(make_bundle(raw, signatures=[bare])) == ErrorCode.BAD_SIGNATURE


def test_below_threshold() -> None:
    two_of_three = root(KEY_A, KEY_B, KEY_C, threshold=2)
    assert code_of(make_bundle(keys=[KEY_A]), two_of_three) == ErrorCode.BELOW_THRESHOLD
    # one good signature and one by an outsider is still one
    assert code_of(make_bundle(keys=[KEY_A, OUTSIDER]), two_of_three) == "below_threshold"
    manifest, _ = check_bytes(make_bundle(keys=[KEY_C, KEY_A]), two_of_three)
    assert manifest.product == PRODUCT


def test_the_same_key_twice_counts_once() -> None:
    raw = cbor2.dumps(manifest_doc(), canonical=True)
    (sig,) = sign(MANIFEST_CONTEXT, raw, [KEY_A])
    bundle = make_bundle(raw, signatures=[sig, sig])
    assert code_of(bundle, root(KEY_A, KEY_B, threshold=2)) == ErrorCode.BELOW_THRESHOLD


def test_extra_signatures_by_unknown_keys_are_ignored_once_the_threshold_is_met() -> None:
    manifest, _ = check_bytes(make_bundle(keys=[OUTSIDER, KEY_A]))
    assert manifest.version == Version.parse("2.0.0")


def test_signatures_are_checked_before_the_manifest_is_parsed() -> None:
    garbage = b"\xff not cbor at all"
    assert code_of(make_bundle(garbage, signatures=[])) == ErrorCode.UNSIGNED
    assert code_of(make_bundle(garbage, keys=[OUTSIDER])) == ErrorCode.UNKNOWN_KEY
    assert code_of(make_bundle(garbage, keys=[KEY_A])) == ErrorCode.BAD_MANIFEST


# -- a bundle for someone else ------------------------------------------------------------


def test_a_bundle_reused_from_another_product_is_refused() -> None:
    # Properly signed by a key this box trusts, but for a different product line.
    other = make_bundle(manifest_doc(product="other-box"))
    assert code_of(other) == ErrorCode.WRONG_PRODUCT
    assert code_of(make_bundle(), product="other-box") == ErrorCode.WRONG_PRODUCT


def test_incompatible_hardware() -> None:
    assert code_of(make_bundle(), hardware="board-z") == ErrorCode.INCOMPATIBLE_HARDWARE
    manifest, _ = check_bytes(make_bundle(manifest_doc(hardware=["*"])), hardware="board-z")
    assert manifest.hardware == ("*",)


@pytest.mark.parametrize("installed", ["2.0.0", "2.0.0+other-build", "2.0.1", "3.0.0-rc.1"])
def test_not_newer_than_the_installed_version(installed: str) -> None:
    assert code_of(make_bundle(), installed_version=installed) == ErrorCode.NOT_NEWER


@pytest.mark.parametrize("installed", ["1.9.9", "2.0.0-rc.1", "2.0.0-alpha"])
def test_newer_versions_pass(installed: str) -> None:
    check_bytes(make_bundle(), installed_version=installed)


def test_denied_version() -> None:
    bundle = make_bundle()
    assert code_of(bundle, denylist=["2.0.0"]) == ErrorCode.DENIED_VERSION
    assert code_of(bundle, denylist=[Version.parse("2.0.0+rebuilt")]) == "denied_version"
    check_bytes(bundle, denylist=["2.0.1", "1.5.0"])


def test_expired() -> None:
    doc = manifest_doc(expires=NOW + 100)
    check_bytes(make_bundle(doc), now=NOW + 99)
    assert code_of(make_bundle(doc), now=NOW + 100) == ErrorCode.EXPIRED
    # the device passes max(clock, high-water mark): a clock reset to 1970 does not help
    clock, high_water = 0.0, NOW + 5000.0
    assert code_of(make_bundle(doc), now=max(clock, high_water)) == ErrorCode.EXPIRED


def test_too_large() -> None:
    bundle = make_bundle()
    assert code_of(bundle, max_bundle_size=len(bundle) - 1) == ErrorCode.TOO_LARGE
    check_bytes(bundle, max_bundle_size=len(bundle))


def test_offline_checks_can_skip_device_policy() -> None:
    bundle = make_bundle()
    manifest = verify_header(
        header_of(bundle),
        root(),
        now=NOW,
        product=None,
        hardware=None,
        installed_version=None,
    )
    assert manifest.product == PRODUCT


# -- the manifest's schema ----------------------------------------------------------------


def without(key: str) -> dict:
    doc = manifest_doc()
    del doc[key]
    return doc


BAD_MANIFESTS = {
    "not a map": cbor2.dumps([1, 2]),
    "trailing bytes": cbor2.dumps(manifest_doc(), canonical=True) + b"\x00",
    "float": cbor2.dumps(manifest_doc(created=1.5)),
    "tag": cbor2.dumps(manifest_doc(created=cbor2.CBORTag(1, 5))),
    "format 2": manifest_doc(format=2),
    "format true": manifest_doc(format=True),
    "no version": without("version"),
    "unknown key": manifest_doc(signed_by="me"),
    "empty product": manifest_doc(product=""),
    "product not text": manifest_doc(product=b"edge-box"),
    "control character": manifest_doc(product="edge\nbox"),
    "hardware empty": manifest_doc(hardware=[]),
    "hardware text": manifest_doc(hardware="board-a"),
    "version not semver": manifest_doc(version="2.0"),
    "version v-prefix": manifest_doc(version="v2.0.0"),
    "version int": manifest_doc(version=2),
    "negative created": manifest_doc(created=-1),
    "expires before created": manifest_doc(created=NOW, expires=NOW),
    "bool size": manifest_doc(total_size=True),
    "no files": manifest_doc(files=[], total_size=0),
    "file not map": manifest_doc(files=["README"]),
    "entry missing sha": manifest_doc(files=[{"path": "a", "size": 0, "mode": 0o100644}]),
    "short sha": manifest_doc(files=[{**entry("a", b""), "sha256": b"\x00" * 31}]),
    "hex sha": manifest_doc(files=[{**entry("a", b""), "sha256": "00" * 32}]),
    "negative size": manifest_doc(files=[{**entry("a", b""), "size": -1}], total_size=-1),
    "path bytes": manifest_doc(files=[{**entry("a", b""), "path": b"a"}]),
    "entry extra key": manifest_doc(files=[{**entry("a", b""), "uid": 0}]),
}


@pytest.mark.parametrize("doc", BAD_MANIFESTS.values(), ids=BAD_MANIFESTS.keys())
def test_bad_manifest(doc) -> None:
    assert code_of(make_bundle(doc, payload=b"")) == ErrorCode.BAD_MANIFEST


def files_doc(*entries: dict) -> dict:
    return manifest_doc(files=list(entries), total_size=sum(item["size"] for item in entries))


BAD_PATHS = {
    "dotdot": ["../etc/passwd"],
    "dotdot inside": ["bin/../../x"],
    "dotdot alone": [".."],
    "absolute": ["/etc/passwd"],
    "empty": [""],
    "dot": ["./bin/app"],
    "double slash": ["bin//app"],
    "trailing slash": ["bin/"],
    "backslash": ["bin\\app"],
    "nul": ["bin/a\x00b"],
    "long component": ["a" * 256],
    "duplicate": ["bin/app", "bin/app"],
    "file inside a file": ["bin", "bin/app"],
    "file inside a file, listed first": ["bin/app/x", "bin/app"],
}


@pytest.mark.parametrize("paths", BAD_PATHS.values(), ids=BAD_PATHS.keys())
def test_bad_path(paths: list[str]) -> None:
    doc = files_doc(*(entry(path, b"x") for path in paths))
    assert code_of(make_bundle(doc, payload=b"x" * len(paths))) == ErrorCode.BAD_PATH


def test_good_unusual_paths_pass() -> None:
    names = ["a" * 255, "dir/.hidden", "with space/ü.txt", "...", "a..b"]
    files = {name: (name.encode(), 0o100644) for name in names}
    _, seen = check_bytes(make_bundle(manifest_doc(files), payload=payload_of(files)))
    assert sorted(seen) == sorted(names)


BAD_MODES = {
    "symlink": 0o120777,
    "char device": 0o020644,
    "block device": 0o060660,
    "fifo": 0o010644,
    "socket": 0o140755,
    "directory": 0o040755,
    "setuid": 0o104755,
    "setgid": 0o102755,
    "sticky": 0o101644,
    "world writable": 0o100666,
    "no type bits": 0o644,
    "0o100777": 0o100777,
}


@pytest.mark.parametrize("mode", BAD_MODES.values(), ids=BAD_MODES.keys())
def test_bad_mode(mode: int) -> None:
    doc = files_doc(entry("bin/app", b"x", mode))
    assert code_of(make_bundle(doc, payload=b"x")) == ErrorCode.BAD_MODE


def test_declared_sizes_that_do_not_add_up_to_the_total() -> None:
    doc = manifest_doc()
    doc["total_size"] += 1
    assert code_of(make_bundle(doc)) == ErrorCode.SIZE_MISMATCH
    doc["total_size"] -= 2
    assert code_of(make_bundle(doc)) == ErrorCode.SIZE_MISMATCH


def test_checks_run_in_a_fixed_order_whatever_the_entry_order() -> None:
    # A bad mode on the first entry and a bad path on the second: paths are checked first.
    doc = files_doc(entry("ok", b"x", 0o120777), entry("../x", b"x"))
    assert code_of(make_bundle(doc, payload=b"xx")) == ErrorCode.BAD_PATH


def test_expiry_is_judged_before_the_version() -> None:
    doc = manifest_doc(expires=NOW)
    assert code_of(make_bundle(doc), installed_version="5.0.0") == ErrorCode.EXPIRED


def test_default_policy_matches_the_test_box() -> None:
    assert (PRODUCT, HARDWARE, INSTALLED) == ("edge-box", "board-a", "1.0.0")
