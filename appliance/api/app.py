"""The quart-trio application: blueprints, the guard, errors, headers, metrics and audit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from appliance.api.context import ApiContext
from appliance.api.front import Front
from appliance.api.guard import MUTATING, identify
from appliance.api.problems import CONTENT_TYPE, Problem, problem_for_exception
from appliance.api.routes import admin, auth, bus, config, ota, system, tasks
from appliance.api.security import HSTS, SECURITY_HEADERS
from appliance.ota.pacing import pace_bodies
from appliance.settings import Settings

log = logging.getLogger(__name__)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def create_app(ctx: ApiContext) -> Front:
    """The ASGI application: `Front` (health) before the quart app (everything else)."""
    app = QuartTrio("appliance", static_folder=None)
    settings = ctx.settings()
    app.config.update(
        APPLIANCE=ctx,
        # The largest any route takes; `before` narrows it per route (see body_limit).
        MAX_CONTENT_LENGTH=max(
            settings.http.max_body_bytes,
            *(limit(settings) for limit in LARGE_BODY_ENDPOINTS.values()),
        ),
        BODY_TIMEOUT=30,
        RESPONSE_TIMEOUT=None,
        JSON_SORT_KEYS=False,
        PROPAGATE_EXCEPTIONS=False,
        PROVIDE_AUTOMATIC_OPTIONS=False,  # no CORS here: OPTIONS is a 405 like any other
    )
    app.json.sort_keys = False
    for module in (system, auth, admin, tasks, config, bus, ota):
        app.register_blueprint(module.blueprint)
    # Streamed uploads are read at the handler's pace, not buffered (appliance/ota/pacing.py).
    app.asgi_app = pace_bodies(app.asgi_app, {ota.BUNDLES_PATH})

    @app.before_request
    async def before() -> None:
        g.started = time.perf_counter()
        g.principal = None
        g.auth_error = None
        _limit_body(ctx)
        await identify()

    @app.errorhandler(Exception)
    async def on_error(exc: Exception) -> Response:
        problem = problem_for_exception(exc)
        if problem.status >= 500 and not isinstance(exc, Problem | HTTPException):
            log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
        response = Response(
            problem.render(request.path), status=problem.status, content_type=CONTENT_TYPE
        )
        response.headers.update(problem.headers)
        if problem.status == 413:
            response.headers["Connection"] = "close"
        return response

    @app.after_request
    async def after(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if request.scheme == "https":
            response.headers[HSTS[0]] = HSTS[1]
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "other"
        ctx.metrics.requests.labels(method, route, f"{response.status_code // 100}xx").inc()
        if "started" in g:
            ctx.metrics.latency.labels(route).observe(time.perf_counter() - g.started)
        # Every change and every refused credential is audited; a 429 touched nothing and
        # would only let a client fill the log at the rate limit.
        audited = request.method in MUTATING or response.status_code in (401, 403)
        if audited and response.status_code != 429:
            await _audit(ctx, route, response)
        return response

    return Front(app, ctx)


# Routes whose bodies may be larger than http.max_body_bytes, and their limits.
LARGE_BODY_ENDPOINTS: dict[str, Callable[[Settings], int]] = {
    "tasks.submit_task": lambda settings: settings.tasks.max_input_bytes,
    "config.add_version": config.version_body_limit,
    "bus.publish_message": bus.publish_body_limit,
    ota.UPLOAD_ENDPOINT: ota.bundle_body_limit,
}
# Routes that enforce their limit themselves while they stream the body (an OTA upload
# over it is a failed job with the code too_large, not a bare 413 before the route).
SELF_LIMITED_ENDPOINTS = frozenset({ota.UPLOAD_ENDPOINT})


def _limit_body(ctx: ApiContext) -> None:
    """Task submissions (tasks.max_input_bytes) and config versions (config.max_content_bytes
    as JSON) may be large; every other body is held to http.max_body_bytes. Quart fixes a
    request's limit when it builds the body, so the per-route limit is set on the body
    itself, before anything is read."""
    settings = ctx.settings()
    endpoint = request.url_rule.endpoint if request.url_rule is not None else None
    large = LARGE_BODY_ENDPOINTS.get(endpoint) if endpoint else None
    limit = large(settings) if large else settings.http.max_body_bytes
    if endpoint in SELF_LIMITED_ENDPOINTS:
        return
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    request.body._max_content_length = limit


async def _audit(ctx: ApiContext, route: str, response: Response) -> None:
    principal = g.get("principal")
    error = g.get("auth_error")
    action = f"{request.method} {route}"
    detail = {"path": request.path[:256]}
    if error is not None and response.status_code == 401:
        detail["reason"] = str(error)
    try:
        await ctx.audit.append(
            principal.label if principal else "anonymous",
            action,
            g.get("audit_target", request.path[:256]),
            str(response.status_code),
            remote=request.remote_addr or "",
            detail=detail,
        )
    except Exception:
        # The change itself is already durable; losing its audit line is logged loudly.
        log.exception("could not append to the audit log for %s", action)
