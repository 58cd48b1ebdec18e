"""The ASGI layer in front of the quart app: health and plain config reads without the framework.

Health is what monitors, load balancers and systemd-side probes poll, often and without
credentials, so it skips Quart's request context, the guard and the rate limiter (a probe
must never be told 429) and is answered straight from the ASGI scope, with the same
security headers as every other response. The effective content of a config key is what
every box polls: its plain form is answered here too, with the guard's checks and rate
limit (see appliance/api/config_read.py). So is a token's config watch, the stream every
box holds open: the route's checks, problems, headers and bytes (appliance/api/sse.py), with
one ASGI send per change and no framework between the notifier and the socket. Everything
else goes to the quart app.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qsl

import h11
import trio
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.tcp_server import TCPServer

from appliance.api import config_read, sse
from appliance.api.config_read import Answer, PlainReads, TokenGate, first_headers
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
WATCH_PATH = "/api/v1/config/watch"
_WATCH_HEADERS = [
    (b"content-type", sse.CONTENT_TYPE.encode()),
    *((name.lower().encode(), value.encode()) for name, value in sse.HEADERS.items()),
    *ENCODED_SECURITY_HEADERS,
]


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
        self._gate = TokenGate(ctx)
        self._plain_reads = PlainReads(ctx, self._gate)

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
            if path == WATCH_PATH:
                if scope["method"] == "GET" and await self._watch(scope, receive, send):
                    return None
            elif path.startswith(config_read.PREFIX):
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
            return _problem_answer(scope, exc)

    async def _watch(self, scope: dict, receive: Any, send: Any) -> bool:
        """A token's `GET /api/v1/config/watch`, as the quart route answers it: problems
        before the stream, else the stream until the client leaves (its task ends at
        once) or the appliance stops (the stream ends cleanly). False when the quart
        route should answer (no usable `Bearer` token, a body, an undecodable query)."""
        started = time.perf_counter()
        try:
            opened = self._open_watch(scope)
        except Exception as exc:
            answer = _problem_answer(scope, exc)
            self._time(WATCH_PATH, time.perf_counter() - started)
            await _send(scope, send, answer)
            self._count("GET", WATCH_PATH, answer.status)
            return True
        if opened is None:
            return False
        config, prefix, after = opened
        headers = [*_WATCH_HEADERS, _HSTS] if scope.get("scheme") == "https" else _WATCH_HEADERS
        self._time(WATCH_PATH, time.perf_counter() - started)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self._count("GET", WATCH_PATH, 200)
        write = _direct_writer(send) or _asgi_writer(send)
        left = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_disconnect, receive, left, nursery.cancel_scope)
            events = sse.change_events(config, after, prefix, self.ctx.stopping)
            async with aclosing(events):
                async for chunk in events:
                    await write(chunk)
            nursery.cancel_scope.cancel()
        if not left.is_set():  # the stream is over (a stop, a reset): end it cleanly
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    def _open_watch(self, scope: dict) -> tuple[Any, str, int] | None:
        headers = first_headers(scope)
        try:  # as quart's `request.args`, when that decodes strictly
            query = parse_qsl(scope["query_string"].decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            return None
        if self._gate.admit(headers) is None:
            return None
        config = config_read.service(self.ctx)
        args: dict[str, str] = {}
        for name, value in query:
            args.setdefault(name, value)  # the first of each, as `request.args.get`
        resume = headers.get(b"last-event-id")
        prefix, after = sse.watch_from(
            config,
            args.get("prefix", ""),
            resume.decode("latin1") if resume is not None else None,
            args.get("after"),
        )
        return config, prefix, after

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


def _problem_answer(scope: dict, exc: Exception) -> Answer:
    """`exc` as the problem the app's error handler makes of it."""
    problem = problem_for_exception(exc)
    if problem.status >= 500 and not isinstance(exc, Problem):
        log.error("unhandled error in %s %s", scope["method"], scope["path"], exc_info=exc)
    headers = {"Content-Type": CONTENT_TYPE, **problem.headers}
    return Answer(problem.status, headers, problem.render(scope["path"]))


async def _until_disconnect(receive: Any, left: trio.Event, scope: trio.CancelScope) -> None:
    """Wait for the client to leave; then say so and cancel its stream."""
    while (await receive())["type"] != "http.disconnect":
        pass
    left.set()
    scope.cancel()


def _asgi_writer(send: Any) -> Any:
    async def write(chunk: bytes) -> None:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})

    return write


def _direct_writer(send: Any) -> Any:
    """For hypercorn's HTTP/1.1 over plain TCP, once the response has started: `write(chunk)`
    that puts a body chunk on the wire exactly as `send` would (h11's chunked framing; h11
    keeps no count of a chunked body), but straight into the socket when the socket takes
    it all at once: no task switch, lock or cancel scope per chunk, which is most of what a
    watcher costs per change. What the socket does not take goes through hypercorn's own
    write (its lock, its shield, its handling of a peer that left). `None` for anything
    else (TLS, HTTP/2, HTTP/1.0, another server or version of it): use `send`.

    Safe because only this task writes on the connection while its response streams (it
    checks hypercorn's send lock anyway), and a socket hypercorn has closed has no file
    descriptor (`fileno()` is -1; there is no await between the check and the write)."""
    stream = getattr(send, "__self__", None)
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    server = getattr(getattr(protocol, "send", None), "__self__", None)
    if not (
        isinstance(stream, HTTPStream)
        and isinstance(protocol, H11Protocol)
        and isinstance(server, TCPServer)
        and isinstance(protocol.connection, h11.Connection)
        and protocol.connection.our_state is h11.SEND_BODY
        and protocol.connection.their_http_version == b"1.1"
        and isinstance(server.stream, trio.SocketStream)
    ):
        return None
    sock, lock, fallback = server.stream.socket, server.send_lock, server.protocol_send

    async def write(chunk: bytes) -> None:
        if not chunk:  # a zero-length chunk would end the chunked body: nothing to send
            return
        data = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        sent = 0
        fd = sock.fileno()
        if fd != -1 and not lock.locked() and not sock.did_shutdown_SHUT_WR:
            try:
                sent = os.write(fd, data)
            except OSError:  # full, or the peer left: hypercorn's write tells which
                sent = 0
        if sent < len(data):
            await fallback(RawData(data=data[sent:]))

    return write


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
