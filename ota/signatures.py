"""Signatures over exact bytes, and the threshold rule. Sans-IO.

Every signature is an Ed25519 signature of a **context string followed by the exact bytes
being vouched for**, as stored, never re-encoded:

    MANIFEST_CONTEXT + manifest bytes      (bundle headers)
    TRUST_ROOT_CONTEXT + trust root bytes  (key rotations)

The contexts keep the two uses apart: a signature made for a manifest can never be
presented as a vote for a new trust root, or the other way round.

`check_threshold(message, signatures, keys, threshold)` decides, in this order:

- no signatures at all: `unsigned`;
- at least `threshold` distinct trusted keys signed `message` validly: accepted (extra
  signatures by unknown keys are ignored, so a bundle can carry votes for the next trust
  root during a rotation);
- some valid, but fewer than `threshold`: `below_threshold`;
- none valid, and a trusted key's signature failed: `bad_signature` (the bytes were changed
  after signing, or the signature was);
- none valid, every signature by a key the device does not know: `unknown_key`.

A key id listed twice counts once and is verified once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ota.errors import ErrorCode, OtaError
from ota.keys import PublicKey, SecretKey

__all__ = [
    "MANIFEST_CONTEXT",
    "SIGNATURE_BYTES",
    "TRUST_ROOT_CONTEXT",
    "Signature",
    "check_threshold",
    "sign",
]

MANIFEST_CONTEXT = b"APPLIANCE-OTA manifest v1\n"
TRUST_ROOT_CONTEXT = b"APPLIANCE-OTA trust-root v1\n"
SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class Signature:
    """One signature and the id of the key that claims to have made it."""

    key_id: str
    signature: bytes = field(repr=False)


def sign(context: bytes, message: bytes, keys: Iterable[SecretKey]) -> tuple[Signature, ...]:
    """Signatures of `context + message` by each key, in the given order."""
    signed = context + message
    return tuple(Signature(key.key_id, key.sign(signed)) for key in keys)


def check_threshold(
    context: bytes,
    message: bytes,
    signatures: Sequence[Signature],
    keys: Mapping[str, PublicKey],
    threshold: int,
    *,
    what: str = "manifest",
) -> frozenset[str]:
    """The ids of the trusted keys that validly signed `context + message`, if there are at
    least `threshold` of them; `OtaError` (see the module docstring) otherwise."""
    if not signatures:
        raise OtaError(ErrorCode.UNSIGNED, f"the {what} carries no signature")
    signed = context + message
    valid: set[str] = set()
    failed: set[str] = set()
    unknown: set[str] = set()
    for sig in signatures:
        if sig.key_id in valid or sig.key_id in failed:
            continue
        key = keys.get(sig.key_id)
        if key is None:
            unknown.add(sig.key_id)
        elif key.verify(signed, sig.signature):
            valid.add(sig.key_id)
        else:
            failed.add(sig.key_id)
    if len(valid) >= threshold:
        return frozenset(valid)
    if valid:
        raise OtaError(
            ErrorCode.BELOW_THRESHOLD,
            f"the {what} has {len(valid)} valid signature(s) by trusted keys, "
            f"{threshold} are required",
        )
    if failed:
        raise OtaError(
            ErrorCode.BAD_SIGNATURE,
            f"the signature(s) of key(s) {', '.join(sorted(failed))} do not match the {what}",
        )
    raise OtaError(
        ErrorCode.UNKNOWN_KEY,
        f"the {what} is signed only by keys this trust root does not hold: "
        f"{', '.join(sorted(unknown))}",
    )
