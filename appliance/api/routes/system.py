"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

from quart import Blueprint, Response

from appliance.api.guard import context, public, requires
from appliance.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from appliance.api.openapi import openapi_document

blueprint = Blueprint("system", __name__)


@blueprint.get("/api/v1/metrics")
@blueprint.get("/metrics")
@requires("viewer")
async def metrics() -> Response:
    return Response(context().metrics.render(), content_type=METRICS_CONTENT_TYPE)


@blueprint.get("/api/v1/openapi.json")
@public
async def openapi() -> Response:
    return Response(openapi_document(), content_type="application/json")
