"""Every endpoint × every kind of caller: the status each one gets, and nothing more.

The endpoint list is the OpenAPI document's `paths`: `test_openapi_lists_exactly_the_tested
endpoints` fails when an endpoint is added to (or removed from) the document without a row
here, and `test_every_route_is_documented_and_declares_its_role` fails when a route is
served but not documented, so a new endpoint cannot slip past the matrix.

The `replica` role stands beside the viewer < operator < admin ladder: it may read the
config feed and snapshot (and so may admin) and is refused everything else with 403.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import httpx
import numpy as np
import pytest

from appliance.auth.sessions import COOKIE_NAME

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
CALLERS = ("none", "bogus", "viewer", "operator", "admin", "replica")
RANK = {"viewer": 0, "operator": 1, "admin": 2}
ROLES = (*RANK, "replica")


@dataclass
class Case:
    """What one request needs: how to send it, and what success and refusal must leave."""

    method: str
    path: str
    role: str | None  # None: public
    ok_status: int
    build: Callable[[Any, str | None], dict[str, Any]]  # (world, secret) -> request kwargs
    check_ok: Callable[[Any, httpx.Response, dict[str, Any]], None]
    check_refused: Callable[[Any, dict[str, Any]], None] = lambda world, prepared: None


class World:
    """The shared appliance with one token per role, all created through the API."""

    def __init__(self, appliance, tokens: dict[str, dict]) -> None:
        self.appliance = appliance
        self.tokens = tokens
        self.admin = appliance.client(appliance.token)

    def secret(self, caller: str) -> str | None:
        if caller == "none":
            return None
        if caller == "bogus":
            # Well-formed, so it is refused for being unknown, not for its shape.
            return f"apl_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
        return self.tokens[caller]["token"]

    def throwaway_token(self, role: str = "viewer") -> dict:
        response = self.admin.post(
            "/api/v1/auth/tokens", json={"name": f"throwaway-{secrets.token_hex(4)}", "role": role}
        )
        assert response.status_code == 201, response.text
        return response.json()

    def token_record(self, token_id: str) -> dict | None:
        listing = self.admin.get("/api/v1/auth/tokens")
        assert listing.status_code == 200
        return next((t for t in listing.json()["tokens"] if t["id"] == token_id), None)

    def token_names(self) -> set[str]:
        listing = self.admin.get("/api/v1/auth/tokens")
        assert listing.status_code == 200
        return {t["name"] for t in listing.json()["tokens"]}

    def session_for(self, secret: str) -> str:
        response = httpx.post(
            f"{self.appliance.url}/api/v1/auth/session",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        return response.cookies[COOKIE_NAME]

    def cookie_works(self, cookie: str) -> bool:
        response = httpx.get(
            f"{self.appliance.url}/api/v1/auth/me",
            headers={"Cookie": f"{COOKIE_NAME}={cookie}"},
            timeout=10,
        )
        # A replica's cookie authenticates, but /auth/me is not for it (403).
        assert response.status_code in (200, 401, 403), response.text
        return response.status_code != 401

    def config_key(self, content: str = '{"rate": 1}') -> str:
        """A fresh config key with one JSON version (and no rules: it serves version 1)."""
        key = f"matrix/app/test/k-{secrets.token_hex(6)}"
        response = self.admin.post(
            f"/api/v1/config/{key}/versions", json={"format": "json", "content": content}
        )
        assert response.status_code == 201, response.text
        return key


def bearer(secret: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"} if secret else {}


# Request builders and checks, one per endpoint.


def plain(world: World, secret: str | None) -> dict[str, Any]:
    return {"headers": bearer(secret)}


def ok_json(key: str) -> Callable[[World, httpx.Response, dict], None]:
    def check(world: World, response: httpx.Response, prepared: dict) -> None:
        assert response.headers["content-type"].startswith("application/json")
        assert key in response.json()

    return check


def check_metrics(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.headers["content-type"].startswith("text/plain")
    assert "appliance_http_requests" in response.text


def check_openapi(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json()["openapi"].startswith("3.")


def build_create_token(world: World, secret: str | None) -> dict[str, Any]:
    name = f"matrix-{secrets.token_hex(4)}"
    return {"headers": bearer(secret), "json": {"name": name, "role": "viewer"}, "name": name}


def check_token_created(world: World, response: httpx.Response, prepared: dict) -> None:
    body = response.json()
    assert body["name"] == prepared["name"] and body["role"] == "viewer"
    assert body["token"].startswith(f"apl_{body['id']}_")
    assert prepared["name"] in world.token_names()


def check_token_not_created(world: World, prepared: dict) -> None:
    assert prepared["name"] not in world.token_names()


def build_revoke(world: World, secret: str | None) -> dict[str, Any]:
    victim = world.throwaway_token()
    return {
        "headers": bearer(secret),
        "path": f"/api/v1/auth/tokens/{victim['id']}",
        "victim": victim,
    }


def check_revoked(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json()["id"] == prepared["victim"]["id"]
    assert response.json()["revoked_at"] is not None
    assert world.token_record(prepared["victim"]["id"])["revoked_at"] is not None
    with world.appliance.client(prepared["victim"]["token"]) as http:
        assert http.get("/api/v1/auth/me").status_code == 401


def check_not_revoked(world: World, prepared: dict) -> None:
    assert world.token_record(prepared["victim"]["id"])["revoked_at"] is None
    with world.appliance.client(prepared["victim"]["token"]) as http:
        assert http.get("/api/v1/auth/me").status_code == 200


def check_me(world: World, response: httpx.Response, prepared: dict) -> None:
    body = response.json()
    assert body["via_session"] is False
    owner = next(t for t in world.tokens.values() if t["id"] == body["token_id"])
    assert (body["name"], body["role"]) == (owner["name"], owner["role"])


def build_create_session(world: World, secret: str | None) -> dict[str, Any]:
    # Without a header the token goes in the body; an empty body names what is missing.
    return {"headers": bearer(secret)} if secret else {"json": {}}


def check_session_created(world: World, response: httpx.Response, prepared: dict) -> None:
    body = response.json()
    assert body["role"] in ROLES and body["csrf_token"]
    assert world.cookie_works(response.cookies[COOKIE_NAME])


def build_delete_session(world: World, secret: str | None) -> dict[str, Any]:
    known = {t["token"] for t in world.tokens.values()}
    if secret not in known:
        return {"headers": bearer(secret)}
    cookie = world.session_for(secret)
    return {"headers": {**bearer(secret), "Cookie": f"{COOKIE_NAME}={cookie}"}, "cookie": cookie}


def check_session_deleted(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json() == {"ended": True}
    assert "max-age=0" in response.headers["set-cookie"].lower()
    assert not world.cookie_works(prepared["cookie"])


def check_backup(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="data.mdb"'
    assert int(response.headers["content-length"]) == len(response.content) > 0


def check_audit_verify(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json()["ok"] is True
    assert response.json()["problems"] == []


def submit(world: World, body: dict, **kwargs) -> dict:
    response = world.admin.post("/api/v1/tasks", json=body, **kwargs)
    assert response.status_code == 202, response.text
    return response.json()


def wait_for_task(world: World, task_id: str, states: set[str], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = world.admin.get(f"/api/v1/tasks/{task_id}").json()
        if task["state"] in states:
            return task
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} never reached {states}")


def build_kernel(world: World, secret: str | None) -> dict[str, Any]:
    return {"headers": bearer(secret), "path": "/api/v1/kernels/rms"}


def check_kernel(world: World, response: httpx.Response, prepared: dict) -> None:
    body = response.json()
    assert body["name"] == "rms" and body["params"]["type"] == "object"


def build_submit(world: World, secret: str | None) -> dict[str, Any]:
    key = f"matrix-{secrets.token_hex(6)}"
    body = {"kernel": "rms", "input": [3.0, 4.0], "idempotency_key": key}
    return {"headers": bearer(secret), "json": body, "key": key}


def tasks_with_key(world: World, key: str) -> list[dict]:
    tasks = world.admin.get("/api/v1/tasks", params={"limit": 1000}).json()["tasks"]
    return [t for t in tasks if t["idempotency_key"] == key]


def check_submitted(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json()["kernel"] == "rms"
    assert [t["id"] for t in tasks_with_key(world, prepared["key"])] == [response.json()["id"]]


def check_not_submitted(world: World, prepared: dict) -> None:
    assert tasks_with_key(world, prepared["key"]) == []


def build_task(world: World, secret: str | None) -> dict[str, Any]:
    task = submit(world, {"kernel": "rms", "input": [1.0, 1.0]})
    return {"headers": bearer(secret), "path": f"/api/v1/tasks/{task['id']}", "task": task}


def check_task(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json()["id"] == prepared["task"]["id"]


def build_result(world: World, secret: str | None) -> dict[str, Any]:
    task = submit(world, {"kernel": "rms", "input": [3.0, 4.0, 3.0, 4.0]})
    wait_for_task(world, task["id"], {"succeeded"})
    return {"headers": bearer(secret), "path": f"/api/v1/tasks/{task['id']}/result"}


def check_result(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json()["outputs"] == {"rms": 3.5355339059327378}


def build_cancel(world: World, secret: str | None) -> dict[str, Any]:
    """A task that runs long enough to be cancelled: FIR, 1024 taps, 4M float32 samples."""
    samples = np.random.default_rng(7).random(4_000_000, dtype=np.float32)
    body = {
        "kernel": "fir",
        "params": {"taps": [1 / 1024] * 1024},
        "input": {"dtype": "float32", "shape": [samples.size], "data": samples.tobytes()},
    }
    response = world.admin.post(
        "/api/v1/tasks", content=cbor2.dumps(body), headers={"Content-Type": "application/cbor"}
    )
    assert response.status_code == 202, response.text
    task = wait_for_task(world, response.json()["id"], {"running"})
    return {"headers": bearer(secret), "path": f"/api/v1/tasks/{task['id']}/cancel", "task": task}


def check_cancelled(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json()["state"] == "cancelled"
    assert world.admin.get(prepared["path"].removesuffix("/cancel")).json()["state"] == (
        "cancelled"
    )


def check_not_cancelled(world: World, prepared: dict) -> None:
    task = wait_for_task(world, prepared["task"]["id"], {"succeeded", "cancelled"})
    assert task["state"] == "succeeded"


def build_bus_publish(world: World, secret: str | None) -> dict[str, Any]:
    topic = f"matrix.t{secrets.token_hex(6)}"
    body = {"topic": topic, "data": "1", "retain": True}
    return {"headers": bearer(secret), "json": body, "topic": topic}


def bus_topics(world: World, prefix: str) -> list[dict]:
    response = world.admin.get("/api/v1/bus/topics", params={"prefix": prefix})
    assert response.status_code == 200, response.text
    return response.json()["topics"]


def check_bus_published(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json()["topic"] == prepared["topic"]
    [topic] = bus_topics(world, prepared["topic"])
    assert (topic["topic"], topic["messages"], topic["retained"]) == (prepared["topic"], 1, True)


def check_bus_not_published(world: World, prepared: dict) -> None:
    assert bus_topics(world, prepared["topic"]) == []


CONFIG_KEY = "/api/v1/config/{tenant}/{app}/{env}/{name}"


def refused_as(status: int, code: str) -> Callable[[World, httpx.Response, dict], None]:
    """The allowed caller's outcome where the shared appliance cannot do more: OTA without
    a slot root (tests/ota/device runs the real installs on boxes that have one)."""

    def check(world: World, response: httpx.Response, prepared: dict) -> None:
        assert response.status_code == status
        assert response.json()["code"] == code

    return check


def build_ota_job(world: World, secret: str | None) -> dict[str, Any]:
    return {"headers": bearer(secret), "path": "/api/v1/ota/jobs/no-such-job"}


def build_ota_bundle(world: World, secret: str | None) -> dict[str, Any]:
    headers = {**bearer(secret), "Content-Type": "application/octet-stream"}
    return {"headers": headers, "content": b"APPLIANCE-OTA\n"}


def on_key(suffix: str = "") -> Callable[[World, str | None], dict[str, Any]]:
    def build(world: World, secret: str | None) -> dict[str, Any]:
        key = world.config_key()
        return {"headers": bearer(secret), "path": f"/api/v1/config/{key}{suffix}", "key": key}

    return build


def check_effective(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.headers["content-type"] == "application/json"
    assert response.text == '{"rate": 1}'
    assert response.headers["etag"].startswith('"') and response.headers["x-config-version"] == "1"


def check_version(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json()["number"] == 1 and response.json()["content"] == '{"rate": 1}'


def build_add_version(world: World, secret: str | None) -> dict[str, Any]:
    key = f"matrix/app/test/new-{secrets.token_hex(6)}"
    return {
        "headers": bearer(secret),
        "path": f"/api/v1/config/{key}/versions",
        "json": {"format": "toml", "content": "rate = 2\n", "comment": "matrix"},
        "key": key,
    }


def check_version_added(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.json()["version"]["number"] == 1
    stored = world.admin.get(f"/api/v1/config/{prepared['key']}")
    assert stored.status_code == 200 and stored.text == "rate = 2\n"


def check_version_not_added(world: World, prepared: dict) -> None:
    assert world.admin.get(f"/api/v1/config/{prepared['key']}").status_code == 404


def build_put_releases(world: World, secret: str | None) -> dict[str, Any]:
    prepared = on_key("/releases")(world, secret)
    prepared["json"] = {"rules": [{"labels": {"matrix": "yes"}, "version": 1, "priority": 7}]}
    return prepared


def check_releases_put(world: World, response: httpx.Response, prepared: dict) -> None:
    rules = [{"labels": {"matrix": "yes"}, "version": 1, "priority": 7}]
    assert response.json()["rules"] == rules
    assert world.admin.get(prepared["path"]).json()["rules"] == rules


def check_releases_not_put(world: World, prepared: dict) -> None:
    assert world.admin.get(prepared["path"]).json()["rules"] == []


def check_watch(world: World, response: httpx.Response, prepared: dict) -> None:
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-store"  # (every response's)
    assert response.headers["x-accel-buffering"] == "no"


CASES: dict[tuple[str, str], Case] = {
    (case.method, case.path): case
    for case in [
        Case("GET", "/api/v1/health", None, 200, plain, ok_json("status")),
        Case("GET", "/api/v1/openapi.json", None, 200, plain, check_openapi),
        Case("GET", "/api/v1/metrics", "viewer", 200, plain, check_metrics),
        Case("GET", "/metrics", "viewer", 200, plain, check_metrics),
        Case("GET", "/api/v1/auth/me", "viewer", 200, plain, check_me),
        Case(
            "POST", "/api/v1/auth/session", None, 201, build_create_session, check_session_created
        ),
        Case(
            "DELETE",
            "/api/v1/auth/session",
            "viewer",
            200,
            build_delete_session,
            check_session_deleted,
        ),
        Case("GET", "/api/v1/auth/tokens", "admin", 200, plain, ok_json("tokens")),
        Case(
            "POST",
            "/api/v1/auth/tokens",
            "admin",
            201,
            build_create_token,
            check_token_created,
            check_token_not_created,
        ),
        Case(
            "DELETE",
            "/api/v1/auth/tokens/{token_id}",
            "admin",
            200,
            build_revoke,
            check_revoked,
            check_not_revoked,
        ),
        Case("POST", "/api/v1/admin/backup", "admin", 200, plain, check_backup),
        Case("GET", "/api/v1/audit", "admin", 200, plain, ok_json("entries")),
        Case("GET", "/api/v1/audit/verify", "admin", 200, plain, check_audit_verify),
        Case("GET", "/api/v1/kernels", "viewer", 200, plain, ok_json("kernels")),
        Case("GET", "/api/v1/kernels/{name}", "viewer", 200, build_kernel, check_kernel),
        Case(
            "POST",
            "/api/v1/tasks",
            "operator",
            202,
            build_submit,
            check_submitted,
            check_not_submitted,
        ),
        Case("GET", "/api/v1/tasks", "viewer", 200, plain, ok_json("tasks")),
        Case("GET", "/api/v1/tasks/{task_id}", "viewer", 200, build_task, check_task),
        Case("GET", "/api/v1/tasks/{task_id}/result", "viewer", 200, build_result, check_result),
        Case(
            "POST",
            "/api/v1/tasks/{task_id}/cancel",
            "operator",
            200,
            build_cancel,
            check_cancelled,
            check_not_cancelled,
        ),
        Case("GET", "/api/v1/scheduler", "viewer", 200, plain, ok_json("queue_depth")),
        Case("GET", "/api/v1/config", "viewer", 200, plain, ok_json("keys")),
        Case("GET", CONFIG_KEY, "viewer", 200, on_key(), check_effective),
        Case("GET", CONFIG_KEY + "/explain", "viewer", 200, on_key("/explain"), ok_json("rules")),
        Case(
            "GET", CONFIG_KEY + "/versions", "viewer", 200, on_key("/versions"), ok_json("versions")
        ),
        Case(
            "POST",
            CONFIG_KEY + "/versions",
            "operator",
            201,
            build_add_version,
            check_version_added,
            check_version_not_added,
        ),
        Case(
            "GET",
            CONFIG_KEY + "/versions/{number}",
            "viewer",
            200,
            on_key("/versions/1"),
            check_version,
        ),
        Case("GET", CONFIG_KEY + "/releases", "viewer", 200, on_key("/releases"), ok_json("rules")),
        Case(
            "PUT",
            CONFIG_KEY + "/releases",
            "operator",
            200,
            build_put_releases,
            check_releases_put,
            check_releases_not_put,
        ),
        Case("GET", "/api/v1/config/watch", "viewer", 200, plain, check_watch),
        Case("GET", "/api/v1/config/log", "replica", 200, plain, ok_json("entries")),
        Case("GET", "/api/v1/config/snapshot", "replica", 200, plain, ok_json("keys")),
        Case("GET", "/api/v1/config/status", "viewer", 200, plain, ok_json("mode")),
        Case("GET", "/api/v1/bus/peers", "viewer", 200, plain, ok_json("connections")),
        Case("GET", "/api/v1/bus/topics", "viewer", 200, plain, ok_json("topics")),
        Case(
            "POST",
            "/api/v1/bus/publish",
            "operator",
            202,
            build_bus_publish,
            check_bus_published,
            check_bus_not_published,
        ),
        Case("GET", "/api/v1/ota/status", "viewer", 200, plain, ok_json("running")),
        Case(
            "GET",
            "/api/v1/ota/jobs/{job_id}",
            "viewer",
            404,
            build_ota_job,
            refused_as(404, "job_not_found"),
        ),
        Case(
            "POST",
            "/api/v1/ota/bundles",
            "admin",
            503,
            build_ota_bundle,
            refused_as(503, "ota_unavailable"),
        ),
        Case("POST", "/api/v1/ota/commit", "admin", 503, plain, refused_as(503, "ota_unavailable")),
        Case(
            "POST", "/api/v1/ota/rollback", "admin", 503, plain, refused_as(503, "ota_unavailable")
        ),
    ]
}


@pytest.fixture(scope="module")
def world(shared_appliance):
    tokens = {}
    with shared_appliance.client(shared_appliance.token) as http:
        for role in ROLES:
            response = http.post(
                "/api/v1/auth/tokens", json={"name": f"matrix-{role}", "role": role}
            )
            assert response.status_code == 201, response.text
            tokens[role] = response.json()
    world = World(shared_appliance, tokens)
    yield world
    world.admin.close()


def operations(document: dict) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def documented_role(operation: dict) -> str | None:
    if operation.get("security") == []:
        return None
    match = re.search(r"Needs the `(\w+)` role", operation["description"])
    assert match, f"the operation names no role: {operation['description']!r}"
    return match.group(1)


def test_openapi_lists_exactly_the_tested_endpoints(shared_appliance):
    with shared_appliance.client() as http:
        response = http.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    documented = operations(document)
    assert documented, "the OpenAPI document lists no operations"
    assert documented == set(CASES)
    for (method, path), case in CASES.items():
        operation = document["paths"][path][method.lower()]
        assert documented_role(operation) == case.role, (method, path)
        assert str(case.ok_status) in operation["responses"], (method, path)


def test_every_route_is_documented_and_declares_its_role():
    """The served routes are exactly the documented ones, each guarded by @requires/@public.

    The app is built (not served) in a child process, to keep this one's imports clean.
    `/api/v1/health` is answered by the ASGI front before the quart app, without a guard.
    """
    script = (
        "import json\n"
        "import appliance.runtime\n"
        "from appliance.api import ApiContext, create_app\n"
        "from appliance.api.guard import ROLE_ATTRIBUTE\n"
        "from appliance.api.front import HEALTH_PATH\n"
        "from appliance.settings import Settings\n"
        "ctx = ApiContext(settings=Settings, store=None, tokens=None, sessions=None,\n"
        "                 audit=None, limiter=None, health=None, metrics=None)\n"
        "front = create_app(ctx)\n"
        "app = front.app\n"
        "rows = [['GET', HEALTH_PATH, True, None]]  # answered by the ASGI front, public\n"
        "for rule in app.url_map.iter_rules():\n"
        "    view = app.view_functions[rule.endpoint]\n"
        "    for method in sorted(rule.methods - {'HEAD', 'OPTIONS'}):\n"
        "        rows.append([method, rule.rule, hasattr(view, ROLE_ATTRIBUTE),\n"
        "                     getattr(view, ROLE_ATTRIBUTE, None)])\n"
        "print(json.dumps(rows))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    served = {}
    for method, rule, declared, role in json.loads(result.stdout):
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)
        served[(method, path)] = (declared, role)
    assert set(served) == set(CASES), (
        f"served, not documented: {sorted(set(served) - set(CASES))}; "
        f"documented, not served: {sorted(set(CASES) - set(served))}"
    )
    for key, (declared, role) in served.items():
        assert declared, f"{key} has neither @requires nor @public"
        assert role == CASES[key].role, key


def test_the_api_package_imports_on_its_own():
    """`import appliance.api` in a fresh interpreter (a tool, a test, a docs build) works."""
    result = subprocess.run(
        [sys.executable, "-c", "import appliance.api"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def expected_status(case: Case, caller: str) -> tuple[int, str | None]:
    """(status, problem code or None for success)."""
    if case.role is None:
        if case.path == "/api/v1/auth/session" and case.method == "POST":
            if caller == "none":
                return 422, "validation_failed"
            if caller == "bogus":
                return 401, "unauthenticated"
        return case.ok_status, None
    if caller in ("none", "bogus"):
        return 401, "unauthenticated"
    if case.role == "replica":
        allowed = caller in ("replica", "admin")
    else:
        allowed = caller in RANK and RANK[caller] >= RANK[case.role]
    return (case.ok_status, None) if allowed else (403, "forbidden")


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("key", list(CASES), ids=[f"{m} {p}" for m, p in CASES])
def test_role_matrix(world, assert_problem, key, caller):
    case = CASES[key]
    secret = world.secret(caller)
    prepared = case.build(world, secret)
    path = prepared.get("path", case.path)
    kwargs = {k: v for k, v in prepared.items() if k in ("headers", "json", "content")}
    with (
        httpx.Client(base_url=world.appliance.url, timeout=10) as http,
        http.stream(case.method, path, **kwargs) as response,
    ):
        # An event stream (the config watch) never ends: its headers are what is checked.
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()

    status, code = expected_status(case, caller)
    if code is None:
        assert response.status_code == status, response.text
        assert "www-authenticate" not in response.headers
        case.check_ok(world, response, prepared)
        return
    body = assert_problem(response, status, code)
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer realm="appliance"'
        assert body["detail"] == (
            "unknown token"
            if caller == "bogus"
            else "credentials required: 'Authorization: Bearer <token>'"
        )
    else:
        assert "www-authenticate" not in response.headers
    if status == 403:
        assert case.role in body["detail"] and caller in body["detail"]
    case.check_refused(world, prepared)
