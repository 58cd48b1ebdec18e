"""OTA over HTTP: upload a bundle, follow its job, see the slots, commit, roll back.

`POST /api/v1/ota/bundles` takes the bundle as a streamed `application/octet-stream` body:
it is read message by message, paced (`appliance.ota.pacing`: Quart would otherwise
buffer whatever the network delivers), and handed to `OtaService.upload`, which verifies
the header before any payload byte is trusted and writes each file as it is hashed. The
answer comes once every byte is verified: 202 with the job (and a `Location` to follow
it); the switch and the restart follow in the background. A refusal is a problem document
with the job's code (`bad_signature`, `not_newer`, `stalled`...) and the failed job in
`job`. The body limit is `ota.max_bundle_bytes`, enforced here (not by the app's generic
limit) so that even a `Content-Length` over it makes a failed job with code `too_large`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint, Response, g, jsonify, request

from appliance.api.bodies import Field, parse_json, validate
from appliance.api.guard import context, requires
from appliance.api.problems import Problem
from appliance.ota import DeviceCode, OtaRefused, OtaService
from appliance.ota.pacing import PACED_BODY, PacedBody
from appliance.settings import Settings

blueprint = Blueprint("ota", __name__)

BUNDLES_PATH = "/api/v1/ota/bundles"
UPLOAD_ENDPOINT = "ota.upload_bundle"
MEDIA_TYPE = "application/octet-stream"
ROLLBACK = {"reason": Field(str, required=False, max_length=200, printable=True)}


def bundle_body_limit(settings: Settings) -> int:
    return settings.ota.max_bundle_bytes


def service() -> OtaService:
    found = context().ota
    if found is None:
        raise Problem(503, DeviceCode.OTA_UNAVAILABLE, "the OTA service is not running")
    return found


def _problem(refusal: OtaRefused) -> Problem:
    extra: dict[str, Any] = {} if refusal.job is None else {"job": refusal.job}
    headers = {"Connection": "close"} if refusal.status in (408, 413) else {}
    return Problem(refusal.status, refusal.code, refusal.detail, headers=headers, **extra)


async def _chunks(paced: PacedBody | None) -> AsyncIterator[bytes]:
    async for chunk in request.body:
        if paced is not None:
            paced.grant()  # the next message may come in while this one is written
        if chunk:
            yield chunk


@blueprint.post(BUNDLES_PATH)
@requires("admin")
async def upload_bundle() -> tuple[Response, int, dict[str, str]]:
    """Upload a bundle (module docstring)."""
    ota = service()
    if request.mimetype != MEDIA_TYPE:
        raise Problem(
            415,
            "unsupported_media_type",
            f"expected {MEDIA_TYPE}, got {request.mimetype or 'no content type'}",
        )
    paced = request.scope.get(PACED_BODY)
    try:
        job = await ota.upload(_chunks(paced), request.content_length)
    except OtaRefused as refusal:
        if refusal.job is not None:
            g.audit_target = f"ota job {refusal.job['id']}"
        raise _problem(refusal) from None
    finally:
        if paced is not None:
            paced.open()
    g.audit_target = f"ota job {job.id}"
    location = f"/api/v1/ota/jobs/{job.id}"
    return jsonify(job.to_json()), 202, {"Location": location}


@blueprint.get("/api/v1/ota/jobs/<job_id>")
@requires("viewer")
async def get_job(job_id: str) -> Response:
    job = service().job(job_id)
    if job is None:
        raise Problem(404, DeviceCode.NOT_FOUND, f"no OTA job {job_id!r}")
    return jsonify(job.to_json())


@blueprint.get("/api/v1/ota/status")
@requires("viewer")
async def get_status() -> Response:
    return jsonify(await service().status())


@blueprint.post("/api/v1/ota/commit")
@requires("admin")
async def commit() -> Response:
    try:
        return jsonify(await service().commit())
    except OtaRefused as refusal:
        raise _problem(refusal) from None


@blueprint.post("/api/v1/ota/rollback")
@requires("admin")
async def rollback() -> Response:
    raw = await request.get_data()
    reason = "manual rollback"
    if raw:
        reason = validate(parse_json(raw, request.content_type), ROLLBACK).get("reason", reason)
    try:
        return jsonify(await service().rollback(reason))
    except OtaRefused as refusal:
        raise _problem(refusal) from None
