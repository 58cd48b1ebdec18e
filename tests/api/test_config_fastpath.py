"""`Front`'s fast path for the plain config read answers exactly as the quart route does.

Against the real process, each request is sent twice: as it is (answered by `Front`, see
appliance/api/config_read.py) and with `?wait=0`, which the fast path leaves to the quart
route and which that route answers at once (`wait_seconds` is 0, so nothing is held).
Status, every header but `Date`, and the body must be the same. In process, over a real
store, `Front` is shown to answer exactly the plain reads of a usable viewer-or-above
token and to hand everything else to the app untouched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.api.context import ApiContext
from appliance.api.front import Front
from appliance.api.longpoll import wait_seconds
from appliance.api.metrics import Metrics
from appliance.auth import RateLimiter, TokenStore
from appliance.store import Store
from tests.api.conftest import check_problem, create_token

KEY = "fastpath/pump/prod/limits"
HIDDEN = "fastpath/pump/prod/hidden"  # released to other boxes only
CONTENT = '{"limit_bar": 3.5}'
ROUTE = "/api/v1/config/<tenant>/<app>/<env>/<name>"
WWW_AUTHENTICATE = 'Bearer realm="appliance"'


@pytest.fixture(scope="module")
def world(shared_appliance) -> dict[str, Any]:
    """Two keys, and a token for each kind of caller (revoked included)."""
    with shared_appliance.client(shared_appliance.token) as admin:
        for key in (KEY, HIDDEN):
            body = {"format": "json", "content": CONTENT}
            assert admin.post(f"/api/v1/config/{key}/versions", json=body).status_code == 201
        rules = [{"labels": {"site": "nowhere"}, "version": 1, "priority": 0}]
        released = admin.put(f"/api/v1/config/{HIDDEN}/releases", json={"rules": rules})
        assert released.status_code == 200, released.text
        secrets = {"admin": shared_appliance.token, "none": None, "bogus": "apl_nope_nope"}
        for role in ("viewer", "replica"):
            secrets[role] = create_token(shared_appliance, f"fp-{role}", role)["token"]
        revoked = create_token(shared_appliance, "fp-revoked", "viewer")
        assert admin.delete(f"/api/v1/auth/tokens/{revoked['id']}").status_code == 200
        secrets["revoked"] = revoked["token"]
        etag = admin.get(f"/api/v1/config/{KEY}").headers["etag"]
    return {"secrets": secrets, "etag": etag}


def both(appliance, method: str, path: str, secret: str | None, headers: dict[str, str]):
    """The request as it is (the fast path) and with `?wait=0` (the quart route)."""
    with appliance.client(secret) as http:
        fast = http.request(method, path, headers=headers)
        slow = http.request(method, path, params={"wait": "0"}, headers=headers)
    assert slow.request.url.query == b"wait=0"
    return fast, slow


def seen(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((k, v) for k, v in response.headers.multi_items() if k != "date")
    return response.status_code, headers, response.content


CASES = {
    # id: (method, key, caller, headers, status, problem code)
    "viewer": ("GET", KEY, "viewer", {}, 200, None),
    "admin": ("GET", KEY, "admin", {}, 200, None),
    "head": ("HEAD", KEY, "viewer", {}, 200, None),
    "if-none-match": ("GET", KEY, "viewer", {"If-None-Match": "{etag}"}, 304, None),
    "if-none-match-weak-list": (
        "GET",
        KEY,
        "viewer",
        {"If-None-Match": '"x", W/{etag}'},
        304,
        None,
    ),
    "if-none-match-star": ("HEAD", KEY, "viewer", {"If-None-Match": "*"}, 304, None),
    "if-none-match-stale": ("GET", KEY, "viewer", {"If-None-Match": '"stale"'}, 200, None),
    "no-token": ("GET", KEY, "none", {}, 401, "unauthenticated"),
    "bogus-token": ("GET", KEY, "bogus", {}, 401, "unauthenticated"),
    "not-bearer": (
        "GET",
        KEY,
        "none",
        {"Authorization": "Basic Zm9vOmJhcg=="},
        401,
        "unauthenticated",
    ),
    "revoked-token": ("GET", KEY, "revoked", {}, 401, "unauthenticated"),
    "replica-role": ("GET", KEY, "replica", {}, 403, "forbidden"),
    "unknown-key": ("GET", "fastpath/pump/prod/nothing", "viewer", {}, 404, "key_not_found"),
    "not-released": ("GET", HIDDEN, "viewer", {}, 404, "not_released"),
    "invalid-key": ("GET", "fastpath/pump/prod/.dot", "viewer", {}, 422, "invalid_key"),
    "head-unknown-key": ("HEAD", "fastpath/x/y/z", "viewer", {}, 404, None),
}


def test_wait_zero_holds_nothing():
    assert wait_seconds({"wait": "0"}) == 0.0


@pytest.mark.parametrize("case", CASES)
def test_the_fast_path_answers_as_the_quart_route(shared_appliance, world, case):
    method, key, caller, headers, status, code = CASES[case]
    headers = {name: value.format(etag=world["etag"]) for name, value in headers.items()}
    path = f"/api/v1/config/{key}"
    fast, slow = both(shared_appliance, method, path, world["secrets"][caller], headers)
    assert seen(fast) == seen(slow)
    assert fast.status_code == status, fast.text
    if code is not None:
        body = check_problem(fast, status, code)
        if code == "not_released":
            assert body["explain"]["version"] is None
        if code == "invalid_key":
            assert body["segment"] == "name"
    if status == 401:
        assert fast.headers["www-authenticate"] == WWW_AUTHENTICATE
    if status in (200, 304):
        assert fast.headers["etag"] == world["etag"]
        assert fast.headers["x-config-version"] == "1"
        assert fast.headers["x-config-format"] == "json"
        assert int(fast.headers["x-config-revision"]) >= 1
        assert fast.headers["x-content-type-options"] == "nosniff"
        assert "strict-transport-security" not in fast.headers  # plain http
    if status == 200:
        assert fast.headers["content-type"] == "application/json"
        assert fast.headers["content-length"] == str(len(CONTENT))
        assert fast.content == (CONTENT.encode() if method == "GET" else b"")
    if status == 304:  # no representation: neither a type nor a length
        assert fast.content == b""
        assert "content-type" not in fast.headers and "content-length" not in fast.headers


def test_a_token_revoked_after_fast_reads_is_refused_at_once(shared_appliance, world):
    token = create_token(shared_appliance, "fp-soon-revoked", "viewer")
    path = f"/api/v1/config/{KEY}"
    with shared_appliance.client(token["token"]) as http:
        assert [http.get(path).status_code for _ in range(3)] == [200, 200, 200]
        with shared_appliance.client(shared_appliance.token) as admin:
            assert admin.delete(f"/api/v1/auth/tokens/{token['id']}").status_code == 200
        refused = http.get(path)
    check_problem(refused, 401, "unauthenticated")
    assert refused.json()["detail"] == "token revoked"
    assert refused.headers["www-authenticate"] == WWW_AUTHENTICATE


def test_fast_reads_follow_every_change_of_the_key(shared_appliance, world):
    key = "fastpath/pump/prod/changing"
    path = f"/api/v1/config/{key}"
    secret = world["secrets"]["viewer"]
    with shared_appliance.client(shared_appliance.token) as admin:
        for number in (1, 2):
            body = {"format": "json", "content": json.dumps({"v": number})}
            assert admin.post(f"{path}/versions", json=body).status_code == 201
            fast, slow = both(shared_appliance, "GET", path, secret, {})
            assert seen(fast) == seen(slow) and fast.json() == {"v": number}
        rules = [{"version": 1, "priority": 0}]
        assert admin.put(f"{path}/releases", json={"rules": rules}).status_code == 200
        fast, slow = both(shared_appliance, "GET", path, secret, {})
        assert seen(fast) == seen(slow) and fast.json() == {"v": 1}
        assert fast.headers["x-config-version"] == "1"
        rules = [{"labels": {"site": "nowhere"}, "version": 2, "priority": 0}]
        assert admin.put(f"{path}/releases", json={"rules": rules}).status_code == 200
        fast, slow = both(shared_appliance, "GET", path, secret, {})
    assert seen(fast) == seen(slow)
    check_problem(fast, 404, "not_released")


def _sample(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name + '{' + labels + '}')} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_fast_reads_are_counted_and_timed_under_the_route(shared_appliance, world):
    with shared_appliance.client(shared_appliance.token) as http:
        before = http.get("/metrics").text
        for _ in range(3):
            assert http.get(f"/api/v1/config/{KEY}").status_code == 200
        assert http.head(f"/api/v1/config/{KEY}").status_code == 200
        assert http.get("/api/v1/config/fastpath/x/y/z").status_code == 404
        after = http.get("/metrics").text
    requests = "appliance_http_requests_total"
    for method, status, count in (("GET", "2xx", 3), ("HEAD", "2xx", 1), ("GET", "4xx", 1)):
        labels = f'method="{method}",route="{ROUTE}",status="{status}"'
        assert _sample(after, requests, labels) - _sample(before, requests, labels) == count
    timed = "appliance_http_request_duration_seconds_count"
    assert (
        _sample(after, timed, f'route="{ROUTE}"') - _sample(before, timed, f'route="{ROUTE}"') == 5
    )


def test_reads_are_not_audited_and_refused_credentials_still_are(shared_appliance, world):
    def last_entry(http: httpx.Client) -> dict:
        return http.get("/api/v1/audit", params={"order": "desc", "limit": 1}).json()["entries"][0]

    with shared_appliance.client(shared_appliance.token) as admin:
        before = last_entry(admin)
        for caller in ("viewer", "admin"):
            with shared_appliance.client(world["secrets"][caller]) as http:
                assert http.get(f"/api/v1/config/{KEY}").status_code == 200
                assert http.get(f"/api/v1/config/{HIDDEN}").status_code == 404
        assert last_entry(admin)["seq"] == before["seq"]
        with shared_appliance.client(world["secrets"]["bogus"]) as http:
            assert http.get(f"/api/v1/config/{KEY}").status_code == 401
        refused = last_entry(admin)
    assert refused["seq"] == before["seq"] + 1
    assert refused["outcome"] == "401" and refused["action"] == f"GET {ROUTE}"


def test_fast_and_quart_reads_share_the_token_bucket(start_appliance, tmp_path):
    config = tmp_path / "appliance.toml"
    config.write_text("[ratelimit]\nrate = 0.01\nburst = 3\n")
    appliance = start_appliance(config=config)
    with appliance.client(appliance.token) as http:
        body = {"format": "json", "content": CONTENT}
        assert http.post(f"/api/v1/config/{KEY}/versions", json=body).status_code == 201
    fast, slow = both(appliance, "GET", f"/api/v1/config/{KEY}", appliance.token, {})
    assert seen(fast) == seen(slow) and fast.status_code == 200  # the bucket is now empty
    fast, slow = both(appliance, "GET", f"/api/v1/config/{KEY}", appliance.token, {})
    for refused in (fast, slow):
        assert check_problem(refused, 429, "rate_limited")["detail"] == (
            "too many requests; slow down"
        )
    # The bucket refills at 0.01/s: about 100 s, a second apart at most between the two.
    waits = [int(response.headers.pop("retry-after")) for response in (fast, slow)]
    assert all(wait >= 90 for wait in waits) and abs(waits[0] - waits[1]) <= 1
    assert seen(fast) == seen(slow)


# In process: which requests `Front` answers itself.


class Fallback:
    """The app behind `Front`: records what reached it."""

    def __init__(self) -> None:
        self.scopes: list[dict] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.scopes.append(scope)


class RecordingLimiter(RateLimiter):
    """A rate limiter that remembers whose buckets were taken from."""

    def __init__(self) -> None:
        super().__init__(1000.0, 1000)
        self.taken: list[str] = []

    def acquire(self, principal: str) -> float:
        self.taken.append(principal)
        return super().acquire(principal)


@pytest.fixture
async def in_process(tmp_path: Path, nursery) -> Any:
    """`Front` over a real store with tokens of each role and no config service."""
    store = Store.open(tmp_path / "store")
    await nursery.start(store.serve)
    tokens = TokenStore(store)
    records, secrets = {}, {}
    for name, role in (("viewer", "viewer"), ("replica", "replica"), ("revoked", "viewer")):
        records[name], secrets[name] = await tokens.create(name, role)
    await tokens.revoke(records["revoked"].id)
    ctx = ApiContext(
        settings=None,  # type: ignore[arg-type]
        store=store,
        tokens=tokens,
        sessions=None,  # type: ignore[arg-type]
        audit=None,  # type: ignore[arg-type]
        limiter=RecordingLimiter(),
        health=None,  # type: ignore[arg-type]
        metrics=Metrics(),
    )
    yield Front(Fallback(), ctx), records, secrets
    nursery.cancel_scope.cancel()
    store.close()


async def call(front: Front, method: str, path: str, query: bytes, headers: list) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers,
        "scheme": "https",
    }
    await front(scope, None, send)
    return sent


PLAIN = "/api/v1/config/a/b/c/d"
ANSWERED = {
    "get": ("GET", PLAIN, b"", "viewer", []),
    "head": ("HEAD", PLAIN, b"", "viewer", []),
    "empty-body": ("GET", PLAIN, b"", "viewer", [(b"content-length", b"0")]),
    "with-cookie-too": ("GET", PLAIN, b"", "viewer", [(b"cookie", b"appliance_session=x")]),
}
HANDED_ON = {
    "query": ("GET", PLAIN, b"wait=5", "viewer", []),
    "bare-query": ("GET", PLAIN, b"x", "viewer", []),
    "post": ("POST", PLAIN, b"", "viewer", []),
    "explain": ("GET", PLAIN + "/explain", b"", "viewer", []),
    "three-segments": ("GET", "/api/v1/config/a/b/c", b"", "viewer", []),
    "empty-segment": ("GET", "/api/v1/config/a//c/d", b"", "viewer", []),
    "trailing-slash": ("GET", PLAIN + "/", b"", "viewer", []),
    "body": ("GET", PLAIN, b"", "viewer", [(b"content-length", b"2")]),
    "chunked": ("GET", PLAIN, b"", "viewer", [(b"transfer-encoding", b"chunked")]),
    "no-credentials": ("GET", PLAIN, b"", None, []),
    "cookie": ("GET", PLAIN, b"", None, [(b"cookie", b"appliance_session=x")]),
    "basic": ("GET", PLAIN, b"", None, [(b"authorization", b"Basic Zm9vOmJhcg==")]),
    "bogus": ("GET", PLAIN, b"", None, [(b"authorization", b"Bearer apl_nope_nope")]),
    "revoked": ("GET", PLAIN, b"", "revoked", []),
    "replica": ("GET", PLAIN, b"", "replica", []),
}


@pytest.mark.parametrize("case", ANSWERED)
async def test_front_answers_plain_reads_itself(in_process, case):
    front, records, secrets = in_process
    method, path, query, caller, headers = ANSWERED[case]
    headers = [(b"authorization", f"Bearer {secrets[caller]}".encode()), *headers]
    start, body = await call(front, method, path, query, headers)
    assert front.app.scopes == []
    assert front.ctx.limiter.taken == [f"token:{records[caller].id}"]
    assert start["status"] == 503  # no config service in this context
    sent = dict(start["headers"])
    assert sent[b"content-type"] == b"application/problem+json"
    assert sent[b"strict-transport-security"] == b"max-age=31536000"
    if method == "GET":
        problem = json.loads(body["body"])
        assert problem["code"] == "config_unavailable" and problem["instance"] == path
    else:
        assert body["body"] == b""


async def test_a_revoked_token_is_handed_on_though_it_was_answered_before(in_process):
    front, records, secrets = in_process
    headers = [(b"authorization", f"Bearer {secrets['viewer']}".encode())]
    start, _ = await call(front, "GET", PLAIN, b"", headers)
    assert start["status"] == 503 and front.app.scopes == []
    await front.ctx.tokens.revoke(records["viewer"].id)
    assert await call(front, "GET", PLAIN, b"", headers) == []
    assert len(front.app.scopes) == 1


@pytest.mark.parametrize("case", HANDED_ON)
async def test_front_hands_everything_else_to_the_app(in_process, case):
    front, _, secrets = in_process
    method, path, query, caller, headers = HANDED_ON[case]
    if caller is not None:
        headers = [(b"authorization", f"Bearer {secrets[caller]}".encode()), *headers]
    assert await call(front, method, path, query, headers) == []
    [scope] = front.app.scopes
    assert (scope["method"], scope["path"], scope["query_string"]) == (method, path, query)
    assert front.ctx.limiter.taken == []  # the app's guard takes from the bucket
