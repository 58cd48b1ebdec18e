"""The trust root: which keys a device believes, how many must agree, and how that changes.

A trust root is a JSON document (the device keeps it in a file under its config directory):

    {
      "type": "appliance-ota-trust-root",
      "serial": 1,
      "threshold": 1,
      "keys": [{"key_id": "…", "public_key": "<64 hex>", "name": "release-2025"}]
    }

`keys` holds 1 to 32 distinct Ed25519 public keys, each exactly a `.pub` file's object
(`ota.keys`); `threshold` (1 to the number of keys) is how many of them must sign a
manifest; `serial` (a positive integer) orders successive roots. Unknown fields, duplicate
JSON keys and documents over 64 KiB are refused (`bad_trust_root`).

**Rotation.** A new root replaces the current one when a `Rotation` carries the new root's
exact bytes and signatures (context `TRUST_ROOT_CONTEXT`) such that

1. at least the *current* threshold of the *current* keys signed it (checked first, before
   the new document is parsed at all);
2. it is a valid trust root;
3. at least the *new* threshold of the *new* keys signed it too, so nobody can rotate the
   fleet onto keys that cannot sign (a typo in a public key would brick updates);
4. its serial is greater than the current one (`not_newer`), so an old, once-valid
   rotation cannot be replayed to bring back retired keys.

`rotate(current, new_root_bytes, signatures)` applies those rules and returns the new
`TrustRoot` or raises `OtaError`; the device then stores `new_root_bytes` (atomically) as
its trust root file. Nothing is written here: this module does no I/O.

The rotation file is JSON: `{"type": "appliance-ota-trust-rotation", "root": "<base64 of
the new root's bytes>", "signatures": [{"key_id": "…", "signature": "<128 hex>"}]}`; the
root travels as base64 so that its bytes, which are what was signed, arrive untouched.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ota.errors import ErrorCode, OtaError
from ota.keys import KeyFileError, PublicKey, SecretKey
from ota.signatures import SIGNATURE_BYTES, TRUST_ROOT_CONTEXT, Signature, check_threshold, sign

__all__ = ["MAX_TRUST_ROOT_BYTES", "Rotation", "TrustRoot", "rotate", "sign_rotation"]

ROOT_TYPE = "appliance-ota-trust-root"
ROTATION_TYPE = "appliance-ota-trust-rotation"
MAX_TRUST_ROOT_BYTES = 64 * 1024
MAX_KEYS = 32
_ROOT_FIELDS = frozenset({"type", "serial", "threshold", "keys"})
_ROTATION_FIELDS = frozenset({"type", "root", "signatures"})


def _refuse(detail: str) -> OtaError:
    return OtaError(ErrorCode.BAD_TRUST_ROOT, detail)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise _refuse("duplicate key in a JSON object")
    return doc


def _no_constants(name: str) -> Any:
    raise _refuse(f"{name} is not allowed")


def _load_json(data: bytes, what: str, fields: frozenset[str], kind: str) -> dict[str, Any]:
    if len(data) > MAX_TRUST_ROOT_BYTES:
        raise _refuse(f"the {what} is larger than {MAX_TRUST_ROOT_BYTES} bytes")
    try:
        doc = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except OtaError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _refuse(f"the {what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _refuse(f"the {what} is not a JSON object")
    if doc.keys() != fields:
        raise _refuse(f"the {what} must have exactly the fields {sorted(fields)}")
    if doc["type"] != kind:
        raise _refuse(f"the {what} has type {doc['type']!r}, expected {kind!r}")
    return doc


def _positive(value: Any, name: str) -> int:
    if type(value) is not int or value < 1:
        raise _refuse(f"{name} must be a positive integer")
    return value


@dataclass(frozen=True)
class TrustRoot:
    """The keys a device trusts and how many of them a manifest needs."""

    keys: tuple[PublicKey, ...]
    threshold: int = 1
    serial: int = 1
    by_id: Mapping[str, PublicKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = tuple(self.keys)
        object.__setattr__(self, "keys", keys)
        if not 1 <= len(keys) <= MAX_KEYS:
            raise _refuse(f"a trust root holds 1 to {MAX_KEYS} keys")
        by_id = {key.key_id: key for key in keys}
        if len(by_id) != len(keys):
            raise _refuse("a key is listed twice")
        _positive(self.serial, "serial")
        if type(self.threshold) is not int or not 1 <= self.threshold <= len(keys):
            raise _refuse(f"threshold must be between 1 and the number of keys ({len(keys)})")
        object.__setattr__(self, "by_id", by_id)

    def check(
        self,
        context: bytes,
        message: bytes,
        signatures: Sequence[Signature],
        *,
        what: str = "manifest",
    ) -> frozenset[str]:
        """`check_threshold` against this root's keys and threshold."""
        return check_threshold(context, message, signatures, self.by_id, self.threshold, what=what)

    def to_json(self) -> bytes:
        doc = {
            "type": ROOT_TYPE,
            "serial": self.serial,
            "threshold": self.threshold,
            "keys": [key.to_document() for key in self.keys],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> TrustRoot:
        """Parse a trust root document; `OtaError(bad_trust_root)` if it is not one."""
        doc = _load_json(data, "trust root", _ROOT_FIELDS, ROOT_TYPE)
        if not isinstance(doc["keys"], list):
            raise _refuse("keys is not an array")
        keys = []
        for index, item in enumerate(doc["keys"]):
            if not isinstance(item, dict) or not item.keys() <= {"key_id", "public_key", "name"}:
                raise _refuse(f"keys[{index}] is not a public key object")
            try:
                keys.append(PublicKey.from_document(item, f"keys[{index}]"))
            except KeyFileError as exc:
                raise _refuse(f"keys[{index}]: {exc}") from None
        return cls(tuple(keys), doc["threshold"], _positive(doc["serial"], "serial"))


@dataclass(frozen=True)
class Rotation:
    """A proposed new trust root: its exact bytes and the signatures over them."""

    root: bytes = field(repr=False)
    signatures: tuple[Signature, ...]

    def to_json(self) -> bytes:
        doc = {
            "type": ROTATION_TYPE,
            "root": base64.b64encode(self.root).decode(),
            "signatures": [
                {"key_id": sig.key_id, "signature": sig.signature.hex()} for sig in self.signatures
            ],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Rotation:
        doc = _load_json(data, "rotation", _ROTATION_FIELDS, ROTATION_TYPE)
        try:
            root = base64.b64decode(doc["root"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _refuse("root is not base64") from None
        if not isinstance(doc["signatures"], list) or len(doc["signatures"]) > 2 * MAX_KEYS:
            raise _refuse(f"signatures must be an array of at most {2 * MAX_KEYS}")
        signatures = []
        for item in doc["signatures"]:
            if not isinstance(item, dict) or item.keys() != {"key_id", "signature"}:
                raise _refuse("a signature is {key_id, signature}")
            key_id, sig = item["key_id"], item["signature"]
            try:
                raw = bytes.fromhex(sig) if isinstance(sig, str) else b""
            except ValueError:
                raw = b""
            if not isinstance(key_id, str) or len(raw) != SIGNATURE_BYTES:
                raise _refuse(f"a signature is {SIGNATURE_BYTES} bytes in hex, with a key_id")
            signatures.append(Signature(key_id, raw))
        return cls(root, tuple(signatures))


def sign_rotation(new_root: TrustRoot | bytes, keys: Iterable[SecretKey]) -> Rotation:
    """A rotation to `new_root` signed by `keys` (a threshold of the current keys and a
    threshold of the new ones; one key may count for both)."""
    raw = new_root.to_json() if isinstance(new_root, TrustRoot) else bytes(new_root)
    return Rotation(raw, sign(TRUST_ROOT_CONTEXT, raw, keys))


def rotate(current: TrustRoot, new_root: bytes, signatures: Sequence[Signature]) -> TrustRoot:
    """The trust root that replaces `current`, if the rotation rules (module docstring)
    hold; `OtaError` otherwise, and `current` stays in force."""
    current.check(TRUST_ROOT_CONTEXT, new_root, signatures, what="new trust root")
    proposed = TrustRoot.from_json(new_root)
    proposed.check(TRUST_ROOT_CONTEXT, new_root, signatures, what="new trust root (new keys)")
    if proposed.serial <= current.serial:
        raise OtaError(
            ErrorCode.NOT_NEWER,
            f"new trust root serial {proposed.serial} is not above the current {current.serial}",
        )
    return proposed
