"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

import json

from quart import Blueprint, Response

from appliance.api.guard import context, public, requires
from appliance.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from appliance.api.openapi import openapi_document

blueprint = Blueprint("system", __name__)


def health_response_body() -> tuple[int, bytes]:
    snapshot = context().health.snapshot()
    return (200 if snapshot["status"] == "ok" else 503), json.dumps(snapshot).encode()


@blueprint.get("/api/v1/health")
@public
async def health() -> Response:
    status, body = health_response_body()
    return Response(body, status=status, content_type="application/json")


@blueprint.get("/api/v1/metrics")
@blueprint.get("/metrics")
@requires("viewer")
async def metrics() -> Response:
    return Response(context().metrics.render(), content_type=METRICS_CONTENT_TYPE)


@blueprint.get("/api/v1/openapi.json")
@public
async def openapi() -> Response:
    return Response(openapi_document(), content_type="application/json")
