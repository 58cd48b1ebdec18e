"""Trust roots and key rotation: the document, the rules, and the attacks they stop."""

from __future__ import annotations

import hashlib
import json

import pytest

from ota import ErrorCode, OtaError, PublicKey, Rotation, SecretKey, TrustRoot, key_id_of
from ota.keys import KeyFileError
from ota.signatures import MANIFEST_CONTEXT, TRUST_ROOT_CONTEXT, Signature, sign
from ota.trust import rotate, sign_rotation
from tests.ota.craft import KEY_A, KEY_B, KEY_C, OUTSIDER, check_bytes, make_bundle, root

KEY_D = SecretKey(bytes([4]) * 32, "release-d")


def refused(data: bytes) -> OtaError:
    with pytest.raises(OtaError) as caught:
        TrustRoot.from_json(data)
    return caught.value


def test_key_ids_are_the_first_8_bytes_of_the_public_keys_sha256() -> None:
    public = KEY_A.public.public_key
    assert KEY_A.key_id == key_id_of(public) and len(KEY_A.key_id) == 16
    assert KEY_A.key_id == hashlib.sha256(public).hexdigest()[:16]


def test_a_trust_root_round_trips_through_its_json() -> None:
    original = root(KEY_A, KEY_B, threshold=2, serial=7)
    again = TrustRoot.from_json(original.to_json())
    assert again == original
    doc = json.loads(original.to_json())
    assert doc["type"] == "appliance-ota-trust-root"
    assert doc["keys"][0] == {
        "key_id": KEY_A.key_id,
        "public_key": KEY_A.public.public_key.hex(),
        "name": "release-a",
    }


def root_doc(**overrides) -> bytes:
    doc = json.loads(root(KEY_A, KEY_B).to_json())
    doc.update(overrides)
    return json.dumps(doc).encode()


BAD_ROOTS = {
    "not json": b"{",
    "not an object": b"[]",
    "wrong type": root_doc(type="appliance-ota-bundle"),
    "unknown field": root_doc(expires=1),
    "threshold 0": root_doc(threshold=0),
    "threshold over keys": root_doc(threshold=3),
    "threshold text": root_doc(threshold="1"),
    "serial 0": root_doc(serial=0),
    "no keys": root_doc(keys=[]),
    "duplicate key": root_doc(keys=[KEY_A.public.to_document()] * 2),
    "key id mismatch": root_doc(keys=[{**KEY_A.public.to_document(), "key_id": KEY_B.key_id}]),
    "short key": root_doc(keys=[{"key_id": "00" * 8, "public_key": "00" * 31}]),
    "key with secret": root_doc(keys=[json.loads(KEY_A.to_json())]),
    "duplicate json key": b'{"type": "appliance-ota-trust-root", "type": "x"}',
    "NaN": root_doc(threshold=float("nan")),
    "too large": b" " * (64 * 1024 + 1),
}


@pytest.mark.parametrize("data", BAD_ROOTS.values(), ids=BAD_ROOTS.keys())
def test_bad_trust_roots_are_refused(data: bytes) -> None:
    assert refused(data).code == ErrorCode.BAD_TRUST_ROOT


def test_key_files_round_trip_and_refuse_tampering() -> None:
    assert SecretKey.from_json(KEY_A.to_json()) == KEY_A
    assert PublicKey.from_json(KEY_A.public.to_json()) == KEY_A.public
    secret = json.loads(KEY_A.to_json())
    with pytest.raises(KeyFileError):
        SecretKey.from_json(
            json.dumps({**secret, "public_key": KEY_B.public.public_key.hex()}).encode()
        )
    with pytest.raises(KeyFileError):
        PublicKey.from_json(json.dumps({**secret, "secret_key": None}).encode())
    with pytest.raises(KeyFileError):
        PublicKey.from_json(json.dumps({**KEY_A.public.to_document(), "key_id": "0" * 16}).encode())
    with pytest.raises(KeyFileError):
        PublicKey.from_json(b"\xa2 not json")


def new_root(*keys: SecretKey, threshold: int = 1, serial: int = 2) -> bytes:
    return root(*keys, threshold=threshold, serial=serial).to_json()


def rotated(current: TrustRoot, raw: bytes, *signers: SecretKey) -> TrustRoot:
    return rotate(current, raw, sign(TRUST_ROOT_CONTEXT, raw, signers))


def rotation_code(current: TrustRoot, raw: bytes, *signers: SecretKey) -> ErrorCode:
    with pytest.raises(OtaError) as caught:
        rotated(current, raw, *signers)
    return caught.value.code


def test_rotation_signed_by_current_and_new_keys_replaces_the_root() -> None:
    current = root(KEY_A)
    raw = new_root(KEY_B, KEY_C, threshold=2)
    new = rotated(current, raw, KEY_A, KEY_B, KEY_C)
    assert new == TrustRoot.from_json(raw) and new.serial == 2
    # the new root now decides: KEY_A alone no longer installs anything
    with pytest.raises(OtaError) as caught:
        check_bytes(make_bundle(keys=[KEY_A]), new)
    assert caught.value.code == ErrorCode.UNKNOWN_KEY
    check_bytes(make_bundle(keys=[KEY_B, KEY_C]), new)


def test_rotation_must_reach_the_current_threshold_of_current_keys() -> None:
    current = root(KEY_A, KEY_B, threshold=2)
    raw = new_root(KEY_C)
    assert rotation_code(current, raw, KEY_A, KEY_C) == ErrorCode.BELOW_THRESHOLD
    assert rotation_code(current, raw, KEY_C) == ErrorCode.UNKNOWN_KEY  # an attacker's own key
    assert rotation_code(current, raw) == ErrorCode.UNSIGNED
    assert rotated(current, raw, KEY_A, KEY_B, KEY_C).keys == (KEY_C.public,)


def test_rotation_must_also_be_signed_by_the_new_keys() -> None:
    # Guards against rotating onto a key nobody holds (a typo would brick updates).
    assert rotation_code(root(KEY_A), new_root(KEY_B), KEY_A) == ErrorCode.UNKNOWN_KEY
    raw = new_root(KEY_B, KEY_C, threshold=2)
    assert rotation_code(root(KEY_A), raw, KEY_A, KEY_B) == ErrorCode.BELOW_THRESHOLD


def test_a_changed_root_after_signing_is_refused() -> None:
    raw = new_root(KEY_A, KEY_B)
    signatures = sign(TRUST_ROOT_CONTEXT, raw, [KEY_A, KEY_B])
    tampered = new_root(KEY_A, OUTSIDER)
    with pytest.raises(OtaError) as caught:
        rotate(root(KEY_A), tampered, signatures)
    assert caught.value.code == ErrorCode.BAD_SIGNATURE


def test_a_manifest_signature_cannot_vote_for_a_root() -> None:
    raw = new_root(KEY_A)
    misused = sign(MANIFEST_CONTEXT, raw, [KEY_A])
    with pytest.raises(OtaError) as caught:
        rotate(root(KEY_A), raw, misused)
    assert caught.value.code == ErrorCode.BAD_SIGNATURE


def test_an_old_rotation_cannot_be_replayed() -> None:
    first = new_root(KEY_A, KEY_B, serial=2)
    at_two = rotated(root(KEY_A), first, KEY_A, KEY_B)
    second = new_root(KEY_A, KEY_B, threshold=2, serial=3)
    at_three = rotated(at_two, second, KEY_A, KEY_B)
    # replaying the serial-2 document (still validly signed by A and B) would lower the
    # threshold back to 1
    assert rotation_code(at_three, first, KEY_A, KEY_B) == ErrorCode.NOT_NEWER
    assert rotation_code(at_three, new_root(KEY_A, KEY_B, serial=3), KEY_A, KEY_B) == "not_newer"


def test_a_malformed_new_root_is_refused_after_the_signatures() -> None:
    assert rotation_code(root(KEY_A), b"{}", KEY_A) == ErrorCode.BAD_TRUST_ROOT
    assert rotation_code(root(KEY_A), b"{}", OUTSIDER) == ErrorCode.UNKNOWN_KEY


def test_the_rotation_file_round_trips_and_keeps_the_root_bytes_exactly() -> None:
    raw = new_root(KEY_B) + b"\n\n"  # bytes a JSON re-encoding would not reproduce
    rotation = sign_rotation(raw, [KEY_A, KEY_B])
    again = Rotation.from_json(rotation.to_json())
    assert again == rotation and again.root == raw
    assert rotate(root(KEY_A), again.root, again.signatures).keys == (KEY_B.public,)


@pytest.mark.parametrize(
    "doc",
    [
        {"type": "appliance-ota-trust-rotation", "root": "!!", "signatures": []},
        {"type": "appliance-ota-trust-rotation", "root": "", "signatures": [{"key_id": "x"}]},
        {
            "type": "appliance-ota-trust-rotation",
            "root": "",
            "signatures": [{"key_id": "x", "signature": "00" * 63}],
        },
        {"type": "appliance-ota-trust-root", "root": "", "signatures": []},
    ],
)
def test_bad_rotation_files(doc: dict) -> None:
    with pytest.raises(OtaError) as caught:
        Rotation.from_json(json.dumps(doc).encode())
    assert caught.value.code == ErrorCode.BAD_TRUST_ROOT


def test_signature_value_objects_hide_their_bytes_from_repr() -> None:
    sig = Signature(KEY_A.key_id, bytes(64))
    assert "\\x00" not in repr(sig) and "secret" not in repr(KEY_D)
