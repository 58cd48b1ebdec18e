"""The boot state on disk, sans-IO: `encode_state(state) -> bytes`, `decode_state(bytes)`.

A record is three lines:

    appliance-boot-state 1
    sha256:<64 lowercase hex digits of the JSON line, without its newline>
    <the state as canonical JSON: sorted keys, no spaces>

The slot manager keeps two copies (like a redundant bootloader environment) and writes
the older one each time with `seq` one higher, and reads the valid copy with the highest
`seq`. A torn or corrupt copy fails its checksum and is passed over, so a
crash at any point leaves at least the previous state readable.

`decode_state` raises `StateError` with a precise code for every bad input, never
another exception (a Hypothesis test feeds it garbage).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from firmware.errors import BadArgument, StateError
from firmware.state import SLOTS, BootState, FailedVersion

__all__ = ["MAGIC", "MAX_RECORD", "decode_state", "encode_state"]

MAGIC = b"appliance-boot-state 1\n"
MAX_RECORD = 64 * 1024
_DIGEST_PREFIX = b"sha256:"
_FIELDS = {
    "seq",
    "current",
    "good",
    "pending",
    "previous_good",
    "tries_left",
    "versions",
    "failed",
}
_FAILED_FIELDS = {"version", "slot", "cause", "detail", "at"}


def _as_json(state: BootState) -> dict[str, Any]:
    return {
        "seq": state.seq,
        "current": state.current,
        "good": state.good,
        "pending": state.pending,
        "previous_good": state.previous_good,
        "tries_left": state.tries_left,
        "versions": {slot: state.versions[slot] for slot in SLOTS},
        "failed": [
            {
                "version": f.version,
                "slot": f.slot,
                "cause": f.cause,
                "detail": f.detail,
                "at": f.at,
            }
            for f in state.failed
        ],
    }


def encode_state(state: BootState) -> bytes:
    body = json.dumps(_as_json(state), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    data = body.encode("ascii")
    digest = hashlib.sha256(data).hexdigest().encode("ascii")
    return MAGIC + _DIGEST_PREFIX + digest + b"\n" + data + b"\n"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_state(data: bytes) -> BootState:
    if len(data) > MAX_RECORD:
        raise StateError("state_too_large", f"record of {len(data)} bytes > {MAX_RECORD}")
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise StateError("state_truncated", "record ends inside its first line")
        raise StateError("state_magic", "not an appliance boot state record")
    rest = data[len(MAGIC) :]
    digest_line, newline, rest = rest.partition(b"\n")
    body, newline2, tail = rest.partition(b"\n")
    if not newline or not newline2:
        raise StateError("state_truncated", "record ends before its last newline")
    if tail:
        raise StateError("state_truncated", "bytes after the record's last newline")
    if not digest_line.startswith(_DIGEST_PREFIX) or len(digest_line) != 7 + 64:
        raise StateError("state_checksum", "malformed checksum line")
    expected = hashlib.sha256(body).hexdigest().encode("ascii")
    if digest_line[len(_DIGEST_PREFIX) :] != expected:
        raise StateError("state_checksum", "checksum does not match the record")
    try:
        fields = json.loads(body.decode("ascii"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StateError("state_json", f"record is not JSON: {exc}") from None
    return _from_json(fields)


def _from_json(fields: object) -> BootState:
    if not isinstance(fields, dict) or set(fields) != _FIELDS:
        raise StateError("state_field", f"record must hold exactly the fields {sorted(_FIELDS)}")
    versions, failed = fields["versions"], fields["failed"]
    if not isinstance(versions, dict) or not isinstance(failed, list):
        raise StateError("state_field", "versions must be an object and failed a list")
    if any(not isinstance(f, dict) or set(f) != _FAILED_FIELDS for f in failed):
        raise StateError("state_field", f"failed entries hold exactly {sorted(_FAILED_FIELDS)}")
    try:
        return BootState(
            seq=fields["seq"],
            current=fields["current"],
            good=fields["good"],
            pending=fields["pending"],
            previous_good=fields["previous_good"],
            tries_left=fields["tries_left"],
            versions=dict(versions),
            failed=tuple(FailedVersion(**f) for f in failed),
        )
    except BadArgument as exc:
        raise StateError("state_field", exc.message) from None
    except (ValueError, TypeError) as exc:
        raise StateError("state_field", str(exc)) from None
