"""What the box says when it will not (or could not) install, as one exception with a code.

    OtaRefused(status, code, detail)
        status   the HTTP status the API answers with while the request is still open
        code     stable, for programs: a bundle's `ota.ErrorCode` (`bad_signature`,
                 `not_newer`, `payload_hash_mismatch`...) or one of `DeviceCode` below
        detail   for people

A bundle refused by `ota` keeps its `ErrorCode`; `refusal_for(OtaError)` picks the status.
The device adds the codes in `DeviceCode`, for what only the box knows: the upload stalled,
another install runs, the slots are not set up, a firmware operation failed. The routes
turn an `OtaRefused` into a problem document in one place (`appliance.api.routes.ota`), and
a job that ends `failed` carries the same code and detail.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import trio

from ota import ErrorCode, OtaError

__all__ = ["DeviceCode", "OtaRefused", "refusal_for", "refusal_of"]


class DeviceCode(StrEnum):
    """Codes of the device side, beside `ota.ErrorCode`. Never renamed; only added to."""

    OTA_BUSY = "ota_busy"  # another install is under way (409)
    UPDATE_PENDING = "update_pending"  # a new version is on trial: commit or roll back (409)
    NOT_INITIALIZED = "not_initialized"  # no slot installed yet: `firmware init` (409)
    NO_PENDING = "no_pending"  # commit with nothing on trial (409)
    NO_FALLBACK = "no_fallback"  # rollback with no good slot to go back to (409)
    # commit of a slot on trial that is no longer complete (its marker gone or torn), or a
    # rollback into such a slot (409); also a `rolled_back` job's code (the boot step gave
    # the slot up for it)
    SLOT_INCOMPLETE = "slot_incomplete"
    OTA_UNAVAILABLE = "ota_unavailable"  # the firmware root is missing or unreadable (503)
    NO_TRUST_ROOT = "no_trust_root"  # the trust root file is missing or invalid (503)
    STALLED = "stalled"  # the sender sent nothing for ota.stall_timeout_s (408)
    UPLOAD_TIMEOUT = "upload_timeout"  # the upload took longer than ota.upload_timeout_s (408)
    INTERRUPTED = "interrupted"  # the client left, or the appliance stopped or died
    INSTALL_FAILED = "install_failed"  # writing the slot or switching to it failed (500)
    NOT_FOUND = "job_not_found"  # no job with that id (404)


_BUNDLE_STATUS = {
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.HEADER_TOO_LARGE: 413,
}


class OtaRefused(Exception):
    """An OTA request refused or failed: HTTP `status`, stable `code`, human `detail`."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = str(code)
        self.detail = detail
        self.job: dict[str, Any] | None = None  # the failed job's JSON, when there is one


def refusal_for(error: OtaError) -> OtaRefused:
    """A bundle refused by the `ota` checks: 413 for size, else 422 with its code."""
    return OtaRefused(_BUNDLE_STATUS.get(error.code, 422), error.code, error.detail)


def refusal_of(exc: BaseException, upload_timeout: float) -> OtaRefused | None:
    """What ended an install, as the refusal its job records: a bundle's verdict, a
    timeout, a failed write. None when it was cancelled (the client left, the appliance is
    stopping): the job is then `interrupted`."""
    if isinstance(exc, OtaRefused):
        return exc
    if isinstance(exc, OtaError):
        return refusal_for(exc)
    if isinstance(exc, trio.TooSlowError):
        return OtaRefused(
            408, DeviceCode.UPLOAD_TIMEOUT, f"the upload took longer than {upload_timeout:g} s"
        )
    if isinstance(exc, OSError):
        return OtaRefused(500, DeviceCode.INSTALL_FAILED, f"writing the slot failed: {exc}")
    if isinstance(exc, Exception):
        return OtaRefused(500, DeviceCode.INSTALL_FAILED, f"{type(exc).__name__}: {exc}")
    return None
