"""What can go wrong with a bundle, as data: one exception, a stable code for each situation.

    Exception
     ├── OtaError        the bundle (or a trust-root document) is refused; `.code` says why.
     │                   Remote garbage: whatever bytes come in, the parsers and verifiers
     │                   raise this and nothing else.
     └── OtaMisuse       the caller broke a rule of an API (fed a reader after its end,
                         built a bundle from a bad tree): a bug or an operator mistake on
                         this side, never a verdict on a bundle.

`ErrorCode` values are part of the contract: the device reports them in its OTA job, the
`ota` command prints them as `error: <code>: <detail>`. Never rename one; add new ones.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode", "OtaError", "OtaMisuse"]


class ErrorCode(StrEnum):
    """Why a bundle was refused. docs/ota-bundle.md §7 explains each."""

    BAD_MAGIC = "bad_magic"
    HEADER_TOO_LARGE = "header_too_large"
    BAD_HEADER = "bad_header"
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    BELOW_THRESHOLD = "below_threshold"
    BAD_MANIFEST = "bad_manifest"
    WRONG_PRODUCT = "wrong_product"
    INCOMPATIBLE_HARDWARE = "incompatible_hardware"
    NOT_NEWER = "not_newer"
    DENIED_VERSION = "denied_version"
    EXPIRED = "expired"
    BAD_PATH = "bad_path"
    BAD_MODE = "bad_mode"
    SIZE_MISMATCH = "size_mismatch"
    PAYLOAD_HASH_MISMATCH = "payload_hash_mismatch"
    TRUNCATED = "truncated"
    TRAILING_DATA = "trailing_data"
    TOO_LARGE = "too_large"
    BAD_TRUST_ROOT = "bad_trust_root"


class OtaError(Exception):
    """A bundle or trust-root document refused: `code` (an `ErrorCode`, also a plain str)
    for programs, `detail` for people."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = ErrorCode(code)
        self.detail = detail


class OtaMisuse(Exception):
    """An API used against its contract on this side (not something a bundle can cause)."""
