"""The HTTP API and its server: a quart-trio app served by hypercorn in our nursery."""

from appliance.api.app import create_app
from appliance.api.context import ApiContext
from appliance.api.metrics import Metrics
from appliance.api.server import serve_http

__all__ = ["ApiContext", "Metrics", "create_app", "serve_http"]
