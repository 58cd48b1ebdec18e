"""The ASGI layer in front of the quart app: `/api/v1/health` answered without the framework.

Health is what monitors, load balancers and systemd-side probes poll, often and without
credentials, so it skips Quart's request context, the guard and the rate limiter (a probe
must never be told 429) and is answered straight from the ASGI scope, with the same
security headers as every other response. Everything else goes to the quart app.
"""

from __future__ import annotations

import json
from typing import Any

from appliance.api.context import ApiContext
from appliance.api.problems import CONTENT_TYPE, Problem
from appliance.api.security import ENCODED_SECURITY_HEADERS, HSTS

HEALTH_PATH = "/api/v1/health"
HEALTH_METHODS = ("GET", "HEAD")
_HSTS = (HSTS[0].lower().encode(), HSTS[1].encode())


def health_body(ctx: ApiContext) -> tuple[int, bytes]:
    snapshot = ctx.health.snapshot()
    return (200 if snapshot["status"] == "ok" else 503), json.dumps(snapshot).encode()


class Front:
    def __init__(self, app: Any, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == HEALTH_PATH:
            await self._health(scope, send)
        else:
            await self.app(scope, receive, send)

    async def _health(self, scope: dict, send: Any) -> None:
        method = scope["method"]
        if method in HEALTH_METHODS:
            status, body = health_body(self.ctx)
            headers = [(b"content-type", b"application/json")]
        else:
            problem = Problem(
                405,
                "method_not_allowed",
                f"{HEALTH_PATH} allows GET and HEAD",
                title="Method Not Allowed",
            )
            status, body = 405, problem.render(HEALTH_PATH)
            headers = [(b"content-type", CONTENT_TYPE.encode()), (b"allow", b"GET, HEAD")]
        headers += [(b"content-length", str(len(body)).encode()), *ENCODED_SECURITY_HEADERS]
        if scope.get("scheme") == "https":
            headers.append(_HSTS)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body if method != "HEAD" else b""})
        label = method if method in ("GET", "HEAD") else "other"
        self.ctx.metrics.requests.labels(label, HEALTH_PATH, f"{status // 100}xx").inc()
