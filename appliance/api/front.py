"""The ASGI layer in front of the quart app: `/api/v1/health` answered without the framework.

Health is what monitors, load balancers and systemd-side probes poll, often and without
credentials, so it skips Quart's request context, the guard and the rate limiter (a probe
must never be told 429) and is answered straight from the ASGI scope, with the same
security headers as every other response. Everything else goes to the quart app.
"""

from __future__ import annotations

import json
import time
from typing import Any

import trio

from appliance.api.context import ApiContext
from appliance.api.problems import CONTENT_TYPE, Problem
from appliance.api.security import ENCODED_SECURITY_HEADERS, HSTS

HEALTH_PATH = "/api/v1/health"
HEALTH_METHODS = ("GET", "HEAD")
# Health is computed at most this often however hard it is polled, so a flood of probes
# cannot keep the store busy; a change of phase (starting/ok/stopping) shows at once.
HEALTH_CACHE_S = 0.1
_HSTS = (HSTS[0].lower().encode(), HSTS[1].encode())


def health_body(ctx: ApiContext) -> tuple[int, bytes]:
    snapshot = ctx.health.snapshot()
    return (200 if snapshot["status"] == "ok" else 503), json.dumps(snapshot).encode()


class Front:
    def __init__(self, app: Any, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx
        self._cached: tuple[float, str, int, bytes] = (-1.0, "", 0, b"")
        self._counters: dict[tuple[str, int], Any] = {}

    def _health_body(self) -> tuple[int, bytes]:
        now = time.monotonic()
        stamp, phase, status, body = self._cached
        if now - stamp > HEALTH_CACHE_S or phase != self.ctx.health.phase:
            status, body = health_body(self.ctx)
            self._cached = (now, self.ctx.health.phase, status, body)
        return status, body

    def _count(self, method: str, status: int) -> None:
        key = (method if method in HEALTH_METHODS else "other", status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self.ctx.metrics.requests.labels(key[0], HEALTH_PATH, f"{status // 100}xx")
            self._counters[key] = counter
        counter.inc()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == HEALTH_PATH:
            await self._health(scope, send)
        else:
            await self.app(scope, receive, _shielded(send))

    async def _health(self, scope: dict, send: Any) -> None:
        method = scope["method"]
        if method in HEALTH_METHODS:
            status, body = self._health_body()
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
        self._count(method, status)


def _shielded(send: Any) -> Any:
    """`send` that a cancel cannot interrupt.

    quart-trio cancels its per-request nursery as soon as the last body message is sent, and
    hypercorn re-arms the connection's keep-alive idle watcher inside that very `send`; the
    cancel lost the watcher, and every keep-alive connection left idle after a Quart
    response then held a graceful stop for the whole `graceful_timeout_s`. Hypercorn already
    shields its socket writes, so shielding the whole send adds no new way to hang."""

    async def send_shielded(message: dict) -> None:
        with trio.CancelScope(shield=True):
            await send(message)

    return send_shielded
