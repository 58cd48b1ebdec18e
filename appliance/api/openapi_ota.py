"""The OTA part of the OpenAPI document (appliance/api/openapi.py adds it to the rest).

`describe(op, as_json, ref)` takes that module's helpers (so the operations look like every
other one) and returns the OTA paths and schemas. docs/api.md and docs/ota.md say the same
in prose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["describe"]

_PROGRESS = {
    "type": "object",
    "properties": {
        "bytes_received": {"type": "integer", "minimum": 0},
        "bundle_size": {"type": ["integer", "null"], "description": "once the header verified"},
        "fraction": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "files_done": {"type": "integer", "minimum": 0},
        "files_total": {"type": ["integer", "null"]},
    },
}
_TEXT_OR_NULL = {"type": ["string", "null"]}
SCHEMAS: dict[str, Any] = {
    "OtaJob": {
        "type": "object",
        "description": "An install job. States: receiving, verifying, installing, installed, "
        "rebooting, trial, then committed, failed (with code and detail) or rolled_back "
        "(code: tries_exhausted, slot_incomplete or manual).",
        "required": ["id", "state", "progress"],
        "properties": {
            "id": {"type": "string"},
            "state": {
                "enum": [
                    "receiving",
                    "verifying",
                    "installing",
                    "installed",
                    "rebooting",
                    "trial",
                    "committed",
                    "failed",
                    "rolled_back",
                ]
            },
            "code": {**_TEXT_OR_NULL, "description": "why it failed or was rolled back"},
            "detail": _TEXT_OR_NULL,
            "version": {**_TEXT_OR_NULL, "description": "the bundle's, once its header verified"},
            "from_version": _TEXT_OR_NULL,
            "digest": {**_TEXT_OR_NULL, "description": "sha256 of the signed manifest"},
            "slot": _TEXT_OR_NULL,
            "progress": _PROGRESS,
            "created_at": {"type": "number", "description": "Unix time"},
            "updated_at": {"type": "number", "description": "Unix time"},
        },
    },
    "OtaStatus": {
        "type": "object",
        "description": "The slots (`firmware`: the boot state as `firmware status --json` "
        "prints it), what runs, the ledger kept outside the slots (version floor, denylist, "
        "time high-water mark), the install under way and the last job.",
        "properties": {
            "running": {
                "type": "object",
                "properties": {
                    "version": {"type": "string"},
                    "slot": _TEXT_OR_NULL,
                    "trial": {"type": "boolean"},
                },
            },
            "available": {"type": "boolean"},
            "firmware": {"type": ["object", "null"]},
            "product": {"type": "string"},
            "hardware": {"type": "string"},
            "firmware_root": _TEXT_OR_NULL,
            "floor": _TEXT_OR_NULL,
            "denylist": {"type": "array", "items": {"type": "object"}},
            "time_high_water": {"type": "integer"},
            "install": {"oneOf": [{"$ref": "#/components/schemas/OtaJob"}, {"type": "null"}]},
            "last_job": {"oneOf": [{"$ref": "#/components/schemas/OtaJob"}, {"type": "null"}]},
            "settings": {"type": "object"},
        },
    },
}


def describe(
    op: Callable[..., dict[str, Any]],
    as_json: Callable[..., dict[str, Any]],
    ref: Callable[[str], dict[str, str]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, schemas) of the OTA endpoints, built with openapi.py's helpers."""
    upload = op(
        "Upload a signed bundle (streamed application/octet-stream, at most "
        "ota.max_bundle_bytes). 202 with the job once every byte is verified and written; "
        "the box then switches slots and restarts. Refusals are problems with the bundle's "
        "code (bad_signature, not_newer, payload_hash_mismatch...) and the failed job in "
        "`job`: 413 too_large, 408 stalled or upload_timeout, 409 ota_busy, update_pending "
        "or not_initialized, 503 ota_unavailable or no_trust_root, 422 otherwise",
        "admin",
        as_json(ref("OtaJob"), "Accepted: verified and written; follow the job"),
        ok_status="202",
    )
    upload["requestBody"] = {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    }
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    paths = {
        "/api/v1/ota/bundles": {"post": upload},
        "/api/v1/ota/jobs/{job_id}": {
            "get": op(
                "An install job and its progress (404 job_not_found)",
                "viewer",
                as_json(ref("OtaJob")),
                params=job_id,
            )
        },
        "/api/v1/ota/status": {
            "get": op(
                "Slots, versions, trial and tries, version floor, denylist, last job",
                "viewer",
                as_json(ref("OtaStatus")),
            )
        },
        "/api/v1/ota/commit": {
            "post": op(
                "Commit the version on trial now, without waiting for ota.healthy_s "
                "(409 no_pending when nothing is on trial)",
                "admin",
                as_json(ref("OtaStatus")),
            )
        },
        "/api/v1/ota/rollback": {
            "post": op(
                "Go back to the good slot (on trial) or the previous good one; the version "
                "left is denied. The appliance restarts into it when it ran the slot it left "
                "(`restarting`). Optional body {reason}. 409 no_fallback",
                "admin",
                as_json(
                    {
                        "allOf": [ref("OtaStatus")],
                        "properties": {
                            "rolled_back": {"type": "object"},
                            "restarting": {"type": "boolean"},
                        },
                    }
                ),
            )
        },
    }
    problems = {  # the refusals a client should expect, beside `default`
        ("/api/v1/ota/bundles", "post"): (408, 409, 413, 422, 503),
        ("/api/v1/ota/jobs/{job_id}", "get"): (404,),
        ("/api/v1/ota/commit", "post"): (409, 503),
        ("/api/v1/ota/rollback", "post"): (409, 503),
    }
    for (path, method), statuses in problems.items():
        responses = paths[path][method]["responses"]
        for status in statuses:
            responses[str(status)] = {"$ref": "#/components/responses/Problem"}
    return paths, SCHEMAS
