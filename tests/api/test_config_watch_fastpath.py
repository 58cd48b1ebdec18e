"""`Front` serves a token's config watch exactly as the quart route does.

Against the real process, each watch is opened twice: with the `Bearer` token (served by
`Front`, appliance/api/front.py) and with a session cookie of the same token (left to the
quart route). Status, every header but `Date`, and the bytes of the events must be the
same, for streams and for refusals alike. Then what only the fast path has to get right
by itself: a client that leaves frees its task and its socket, and a stop ends the stream
cleanly. In process, over a real store, on the ASGI messages themselves.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from appliance.api.context import ApiContext
from appliance.api.front import Front
from appliance.api.metrics import Metrics
from appliance.auth import RateLimiter, TokenStore
from appliance.auth.sessions import COOKIE_NAME
from appliance.config import Box, ConfigRepository, parse_key
from appliance.config.service import ConfigService
from appliance.store import Store
from tests.api.conftest import check_problem, create_token

WATCH = "/api/v1/config/watch"
EVENT_END = b"\n\n"


@pytest.fixture(scope="module")
def world(shared_appliance) -> dict[str, Any]:
    appliance = shared_appliance
    secrets = {"admin": appliance.token, "bogus": "apl_nope_nope"}
    for role in ("viewer", "replica"):
        secrets[role] = create_token(appliance, f"wf-{role}", role)["token"]
    revoked = create_token(appliance, "wf-revoked", "viewer")
    with appliance.client(appliance.token) as admin:
        assert admin.delete(f"/api/v1/auth/tokens/{revoked['id']}").status_code == 200
    secrets["revoked"] = revoked["token"]
    session = httpx.post(
        f"{appliance.url}/api/v1/auth/session",
        headers={"Authorization": f"Bearer {secrets['viewer']}"},
        timeout=10,
    )
    assert session.status_code == 201, session.text
    return {"secrets": secrets, "cookie": session.cookies[COOKIE_NAME]}


def put(appliance, key: str, n: int) -> int:
    with appliance.client(appliance.token) as admin:
        body = {"format": "json", "content": json.dumps({"n": n})}
        response = admin.post(f"/api/v1/config/{key}/versions", json=body)
    assert response.status_code == 201, response.text
    return response.json()["revision"]


def revision(appliance) -> int:
    with appliance.client(appliance.token) as admin:
        return admin.get("/api/v1/config/status").json()["revision"]


def clients(appliance, world) -> tuple[httpx.Client, httpx.Client]:
    """(the fast path's client, the quart route's client), as the same viewer."""
    fast = appliance.client(world["secrets"]["viewer"], timeout=15)
    slow = httpx.Client(
        base_url=appliance.url, headers={"Cookie": f"{COOKIE_NAME}={world['cookie']}"}, timeout=15
    )
    return fast, slow


def read_events(response: httpx.Response, count: int) -> bytes:
    """The stream's bytes up to the end of its `count`th event (keep-alives included)."""
    data = b""
    for piece in response.iter_raw():
        data += piece
        if data.count(EVENT_END) >= count:
            break
    assert data.count(EVENT_END) == count, data
    return data


def seen(response: httpx.Response) -> tuple[int, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in response.headers.multi_items() if k != "date")
    return response.status_code, headers


def watch_both(appliance, world, count: int, **kwargs) -> tuple[tuple, tuple]:
    """Each client's (status, headers, first `count` events' bytes or the whole body)."""
    fast, slow = clients(appliance, world)
    answers = []
    with fast, slow:
        for client in (fast, slow):
            with client.stream("GET", WATCH, **kwargs) as response:
                if response.status_code == 200:
                    body = read_events(response, count)
                else:
                    body = response.read()
                answers.append((*seen(response), body))
    return answers[0], answers[1]


def test_the_same_stream_live_from_both(shared_appliance, world):
    fast, slow = clients(shared_appliance, world)
    params = {"prefix": "wf/live/"}
    with (
        fast,
        slow,
        fast.stream("GET", WATCH, params=params) as one,
        slow.stream("GET", WATCH, params=params) as other,
    ):
        assert seen(one) == seen(other)
        assert one.status_code == 200 and one.headers["content-type"] == "text/event-stream"
        assert one.headers["x-accel-buffering"] == "no"
        assert one.headers["cache-control"] == "no-store"
        assert one.headers["x-content-type-options"] == "nosniff"
        made = [put(shared_appliance, "wf/live/x/k", 1)]
        put(shared_appliance, "wf/other/x/k", 1)  # another prefix: not sent
        made.append(put(shared_appliance, "wf/live/x/k", 2))
        fast_bytes, slow_bytes = read_events(one, 2), read_events(other, 2)
    assert fast_bytes == slow_bytes
    assert [int(i) for i in re.findall(rb"^id: (\d+)$", fast_bytes, re.MULTILINE)] == made
    assert fast_bytes.count(b"event: change\n") == 2


def test_resume_points_and_refusals_alike(shared_appliance, world):
    start = revision(shared_appliance)
    made = [put(shared_appliance, "wf/resume/x/k", n) for n in range(3)]
    now = made[-1]
    cases = [
        # (request, events to read), status, problem code
        (
            ({"headers": {"Last-Event-ID": str(made[0])}, "params": {"prefix": "wf/resume/"}}, 2),
            200,
            None,
        ),
        (({"params": {"after": start, "prefix": "wf/resume/"}}, 3), 200, None),
        (
            ({"params": {"after": start}, "headers": {"Last-Event-ID": f"{made[1]}"}}, 1),
            200,
            None,
        ),
        (({"params": {"prefix": "wf/resume/", "after": start, "junk": "x"}}, 3), 200, None),
        (({"params": {"prefix": "no spaces"}}, 0), 422, "invalid_prefix"),
        (({"params": {"after": "-1"}}, 0), 422, "validation_failed"),
        (({"headers": {"Last-Event-ID": "abc"}}, 0), 422, "validation_failed"),
        (({"params": {"after": now + 1000}}, 0), 409, "revision_ahead"),
    ]
    for (kwargs, count), status, code in cases:
        fast, slow = watch_both(shared_appliance, world, count, **kwargs)
        assert fast == slow, kwargs
        assert fast[0] == status
        if code is not None:
            assert json.loads(fast[2])["code"] == code
    fast, _ = watch_both(
        shared_appliance,
        world,
        2,
        headers={"Last-Event-ID": str(made[0])},
        params={"prefix": "wf/resume/"},
    )
    assert [int(i) for i in re.findall(rb"^id: (\d+)$", fast[2], re.MULTILINE)] == made[1:]


@pytest.mark.parametrize(
    ("caller", "status", "code"),
    [
        ("bogus", 401, "unauthenticated"),
        ("revoked", 401, "unauthenticated"),
        (None, 401, "unauthenticated"),
        ("replica", 403, "forbidden"),
    ],
)
def test_refused_credentials_go_to_the_route(shared_appliance, world, caller, status, code):
    secret = world["secrets"][caller] if caller else None
    with shared_appliance.client(secret) as http, http.stream("GET", WATCH) as response:
        response.read()
    body = check_problem(response, status, code)
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer realm="appliance"'
    else:
        assert "viewer" in body["detail"]


def _sample(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name + '{' + labels + '}')} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_fast_watches_are_counted_under_the_route(shared_appliance, world):
    requests = "appliance_http_requests_total"
    with shared_appliance.client(shared_appliance.token) as http:
        before = http.get("/metrics").text
        with http.stream("GET", WATCH) as response:
            assert response.status_code == 200
        with http.stream("GET", WATCH, params={"after": "x"}) as response:
            assert response.read() and response.status_code == 422
        after = http.get("/metrics").text
    for status in ("2xx", "4xx"):
        labels = f'method="GET",route="{WATCH}",status="{status}"'
        assert _sample(after, requests, labels) - _sample(before, requests, labels) == 1


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_clients_that_leave_free_their_sockets(shared_appliance, world):
    pid = shared_appliance.proc.pid
    with shared_appliance.client(world["secrets"]["viewer"]) as http:
        with http.stream("GET", WATCH) as response:  # warm up whatever is opened once
            assert response.status_code == 200
        before = _fds(pid)
        for _ in range(60):
            with (
                shared_appliance.client(world["secrets"]["viewer"]) as once,
                once.stream("GET", WATCH) as response,
            ):
                assert response.status_code == 200
        deadline = time.monotonic() + 5
        while _fds(pid) > before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _fds(pid) <= before + 2
        assert http.get("/api/v1/health").status_code == 200


def test_a_fast_watch_ends_cleanly_at_sigterm_and_the_process_exits(start_appliance):
    appliance = start_appliance()
    with (
        appliance.client(appliance.token, timeout=15) as http,
        http.stream("GET", WATCH) as response,
    ):
        assert response.status_code == 200
        began = time.monotonic()
        appliance.proc.send_signal(signal.SIGTERM)
        assert response.read() == b""  # ended by the server, with its last chunk
    assert time.monotonic() - began < 5
    assert appliance.proc.wait(10) == 0


# In process: the ASGI messages, on a virtual clock.


@pytest.fixture
async def front(tmp_path: Path, nursery) -> Any:
    store = Store.open(tmp_path / "store")
    await nursery.start(store.serve)
    tokens = TokenStore(store)
    _, secret = await tokens.create("viewer", "viewer")
    config = ConfigService(
        ConfigRepository(store, max_content_bytes=4096, log_retention=10),
        Box("box-1"),
        mode="hub",
    )
    ctx = ApiContext(
        settings=None,  # type: ignore[arg-type]
        store=store,
        tokens=tokens,
        sessions=None,  # type: ignore[arg-type]
        audit=None,  # type: ignore[arg-type]
        limiter=RateLimiter(1000.0, 1000),
        health=None,  # type: ignore[arg-type]
        metrics=Metrics(),
        config=config,
    )
    yield Front(None, ctx), secret
    nursery.cancel_scope.cancel()
    store.close()


class Exchange:
    """One request to `Front`: what it sent, and a way to say the client left."""

    def __init__(self, secret: str, query: bytes = b"") -> None:
        self.sent: list[dict] = []
        self.leave, self._inbox = trio.open_memory_channel[dict](1)
        self.scope = {
            "type": "http",
            "method": "GET",
            "path": WATCH,
            "query_string": query,
            "headers": [(b"authorization", f"Bearer {secret}".encode())],
            "scheme": "http",
        }

    async def receive(self) -> dict:
        return await self._inbox.receive()

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def bodies(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


async def test_a_client_that_leaves_ends_its_task_at_once(front, autojump_clock):
    app, secret = front
    config = app.ctx.config
    for cycle in range(20):
        exchange = Exchange(secret, b"prefix=a/")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app, exchange.scope, exchange.receive, exchange.send)
            await trio.testing.wait_all_tasks_blocked()
            assert exchange.sent[0]["status"] == 200
            revision = (
                await config.add_version(parse_key("a/b/c/d"), "text", str(cycle), author="test")
            )[1]
            await trio.testing.wait_all_tasks_blocked()
            assert (
                f"id: {revision}\nevent: change\n".encode() in exchange.bodies()
            )  # (store writes run in a thread: the virtual clock moves meanwhile)
            began = trio.current_time()
            await exchange.leave.send({"type": "http.disconnect"})
        assert trio.current_time() == began  # the nursery closed: no task of it is left
        assert all(m.get("more_body", True) for m in exchange.sent[1:])  # nothing after


async def test_the_stop_ends_the_stream_with_its_last_chunk(front, autojump_clock):
    app, secret = front
    exchange = Exchange(secret)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, exchange.scope, exchange.receive, exchange.send)
        await trio.sleep(20)  # one keep-alive, after 15 s
        assert exchange.bodies() == b": keep-alive\n\n"
        app.ctx.stopping.set()
        app.ctx.config.notifier.close()
        began = trio.current_time()
    assert trio.current_time() == began
    assert exchange.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
