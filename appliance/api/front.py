"""The ASGI layer in front of the quart app: health and plain config reads without the framework.

Health is what monitors, load balancers and systemd-side probes poll, often and without
credentials, so it skips Quart's request context, the guard and the rate limiter (a probe
must never be told 429) and is answered straight from the ASGI scope, with the same
security headers as every other response. The effective content of a config key is what
every box polls: its plain form is answered here too, with the guard's checks and rate
limit (see appliance/api/config_read.py). Everything else goes to the quart app.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import trio

from appliance.api import config_read
from appliance.api.config_read import Answer, PlainReads
from appliance.api.context import ApiContext
from appliance.api.problems import CONTENT_TYPE, Problem, problem_for_exception
from appliance.api.security import ENCODED_SECURITY_HEADERS, HSTS

log = logging.getLogger(__name__)
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
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._latencies: dict[str, Any] = {}
        self._plain_reads = PlainReads(ctx)

    def _health_body(self) -> tuple[int, bytes]:
        now = time.monotonic()
        stamp, phase, status, body = self._cached
        if now - stamp > HEALTH_CACHE_S or phase != self.ctx.health.phase:
            status, body = health_body(self.ctx)
            self._cached = (now, self.ctx.health.phase, status, body)
        return status, body

    def _count(self, method: str, route: str, status: int) -> None:
        key = (method, route, status // 100)
        counter = self._counters.get(key)
        if counter is None:
            counter = self.ctx.metrics.requests.labels(method, route, f"{status // 100}xx")
            self._counters[key] = counter
        counter.inc()

    def _time(self, route: str, seconds: float) -> None:
        histogram = self._latencies.get(route)
        if histogram is None:
            histogram = self._latencies[route] = self.ctx.metrics.latency.labels(route)
        histogram.observe(seconds)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == HEALTH_PATH:
                return await self._health(scope, send)
            if path.startswith(config_read.PREFIX):
                started = time.perf_counter()
                answer = self._answer_plain_read(scope)
                if answer is not None:
                    self._time(config_read.ROUTE, time.perf_counter() - started)
                    await _send(scope, send, answer)
                    self._count(scope["method"], config_read.ROUTE, answer.status)
                    return None
        await self.app(scope, receive, _shielded(send))

    def _answer_plain_read(self, scope: dict) -> Answer | None:
        """`PlainReads`, with its errors made problems as the app's error handler does."""
        try:
            return self._plain_reads(scope)
        except Exception as exc:
            problem = problem_for_exception(exc)
            if problem.status >= 500 and not isinstance(exc, Problem):
                log.error("unhandled error in %s %s", scope["method"], scope["path"], exc_info=exc)
            headers = {"Content-Type": CONTENT_TYPE, **problem.headers}
            return Answer(problem.status, headers, problem.render(scope["path"]))

    async def _health(self, scope: dict, send: Any) -> None:
        method = scope["method"]
        if method in HEALTH_METHODS:
            status, body = self._health_body()
            answer = Answer(status, {"Content-Type": "application/json"}, body)
        else:
            problem = Problem(
                405,
                "method_not_allowed",
                f"{HEALTH_PATH} allows GET and HEAD",
                title="Method Not Allowed",
            )
            headers = {"Content-Type": CONTENT_TYPE, "Allow": "GET, HEAD"}
            answer = Answer(405, headers, problem.render(HEALTH_PATH))
        await _send(scope, send, answer)
        self._count(method if method in HEALTH_METHODS else "other", HEALTH_PATH, answer.status)


async def _send(scope: dict, send: Any, answer: Answer) -> None:
    """`answer` with its length (none on a 304), the security headers and, over TLS, HSTS;
    to `HEAD` without the body."""
    headers = [(name.lower().encode(), value.encode()) for name, value in answer.headers.items()]
    if answer.status != 304:
        headers.append((b"content-length", str(len(answer.body)).encode()))
    headers += ENCODED_SECURITY_HEADERS
    if scope.get("scheme") == "https":
        headers.append(_HSTS)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    body = answer.body if scope["method"] != "HEAD" else b""
    await send({"type": "http.response.body", "body": body})


def _shielded(send: Any) -> Any:
    """`send` that a cancel cannot interrupt.

    quart-trio cancels its per-request nursery as soon as the last body message is sent, and
    hypercorn re-arms the connection's keep-alive idle watcher inside that very `send`; the
    cancel lost the watcher, and every keep-alive connection left idle after a Quart
    response then held a graceful stop for the whole `graceful_timeout_s`. Hypercorn already
    shields its socket writes, so shielding the whole send adds no new way to hang."""

    async def send_shielded(message: dict) -> None:
        if message.get("more_body"):  # a stream's chunk: the response is not over yet
            await send(message)
            return
        with trio.CancelScope(shield=True):
            await send(message)

    return send_shielded
