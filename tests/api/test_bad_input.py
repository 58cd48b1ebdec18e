"""Bad input gets a precise problem detail, never a 500, and changes nothing.

Each case is one request with its expected status, stable `code` and (for 422) the fields
the `errors` list must name. `test_bad_input_leaves_no_trace` sends every case again and
then checks that the service is healthy and that nothing was stored.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from appliance.settings.model import HttpSettings

MAX_BODY = HttpSettings().max_body_bytes  # the default http.max_body_bytes: 1 MiB
TOKENS = "/api/v1/auth/tokens"
SESSION = "/api/v1/auth/session"
JSON = {"Content-Type": "application/json"}


@dataclass
class Bad:
    id: str
    method: str
    path: str
    status: int
    code: str
    request: Callable[[], dict[str, Any]] = dict
    fields: set[str] = field(default_factory=set)  # fields the 422 `errors` list names
    allow: set[str] = field(default_factory=set)  # methods a 405 `Allow` must list
    admin: bool = True  # send the admin token (else no credentials)


def raw(body: bytes | str, content_type: str | None = "application/json"):
    headers = {"Content-Type": content_type} if content_type else {}
    return lambda: {"content": body, "headers": headers}


def as_json(document: Any):
    return lambda: {"json": document}


def new_token(**extra: Any) -> dict[str, Any]:
    return {"name": "bad-input", "role": "viewer", **extra}


def chunked_oversize() -> dict[str, Any]:
    def chunks() -> Iterator[bytes]:
        sent = 0
        while sent <= MAX_BODY:
            yield b" " * 65536
            sent += 65536

    return {"content": chunks(), "headers": JSON}


MALFORMED = [
    Bad("truncated", "POST", TOKENS, 400, "malformed_json", raw(b'{"name": "x", "role": "viewer"')),
    Bad("empty-body", "POST", TOKENS, 400, "malformed_json", raw(b"")),
    Bad(
        "trailing-garbage",
        "POST",
        TOKENS,
        400,
        "malformed_json",
        raw(b'{"name": "x", "role": "viewer"} {}'),
    ),
    Bad(
        "single-quotes",
        "POST",
        TOKENS,
        400,
        "malformed_json",
        raw(b"{'name': 'x', 'role': 'viewer'}"),
    ),
    Bad(
        "not-utf8",
        "POST",
        TOKENS,
        400,
        "malformed_json",
        raw(b'{"name": "\xff\xfe", "role": "viewer"}'),
    ),
    Bad("deeply-nested", "POST", TOKENS, 400, "malformed_json", raw(b"[" * 100_000)),
    Bad(
        "NaN",
        "POST",
        TOKENS,
        400,
        "malformed_json",
        raw(b'{"name": "x", "role": "viewer", "ttl_s": NaN}'),
    ),
    Bad(
        "Infinity",
        "POST",
        TOKENS,
        400,
        "malformed_json",
        raw(b'{"name": "x", "role": "viewer", "ttl_s": Infinity}'),
    ),
    Bad(
        "-Infinity",
        "POST",
        TOKENS,
        400,
        "malformed_json",
        raw(b'{"name": "x", "role": "viewer", "ttl_s": -Infinity}'),
    ),
    Bad(
        "session-truncated",
        "POST",
        SESSION,
        400,
        "malformed_json",
        raw(b'{"token": "apl_'),
        admin=False,
    ),
]

MEDIA_TYPES = [
    Bad(
        "text-plain",
        "POST",
        TOKENS,
        415,
        "unsupported_media_type",
        raw(json.dumps(new_token()), "text/plain"),
    ),
    Bad(
        "no-content-type",
        "POST",
        TOKENS,
        415,
        "unsupported_media_type",
        raw(json.dumps(new_token()), None),
    ),
    Bad(
        "form-encoded",
        "POST",
        TOKENS,
        415,
        "unsupported_media_type",
        lambda: {"data": {"name": "x", "role": "viewer"}},
    ),
    Bad(
        "json-lookalike",
        "POST",
        TOKENS,
        415,
        "unsupported_media_type",
        raw(json.dumps(new_token()), "application/jsonp"),
    ),
    Bad(
        "session-form",
        "POST",
        SESSION,
        415,
        "unsupported_media_type",
        lambda: {"data": {"token": "apl_x"}},
        admin=False,
    ),
]

INVALID = [
    Bad(
        "missing-name",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json({"role": "viewer"}),
        {"name"},
    ),
    Bad("missing-role", "POST", TOKENS, 422, "validation_failed", as_json({"name": "x"}), {"role"}),
    Bad("empty-object", "POST", TOKENS, 422, "validation_failed", as_json({}), {"name", "role"}),
    Bad(
        "null-name",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(name=None)),
        {"name"},
    ),
    Bad(
        "name-is-number",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(name=5)),
        {"name"},
    ),
    Bad(
        "name-too-long",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(name="n" * 65)),
        {"name"},
    ),
    Bad(
        "name-empty",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(name="")),
        {"name"},
    ),
    Bad(
        "name-unprintable",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(name="tab\there")),
        {"name"},
    ),
    Bad(
        "unknown-role",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(role="root")),
        {"role"},
    ),
    Bad(
        "role-is-list",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(role=["admin"])),
        {"role"},
    ),
    Bad(
        "unknown-field",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(admin=True)),
        {"admin"},
    ),
    Bad(
        "ttl-is-string",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(ttl_s="3600")),
        {"ttl_s"},
    ),
    Bad(
        "ttl-is-bool",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(ttl_s=True)),
        {"ttl_s"},
    ),
    Bad(
        "ttl-too-small",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(ttl_s=59)),
        {"ttl_s"},
    ),
    Bad(
        "ttl-too-large",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        as_json(new_token(ttl_s=10 * 365 * 86400 + 1)),
        {"ttl_s"},
    ),
    Bad(
        "ttl-overflows-float",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        raw(b'{"name": "x", "role": "viewer", "ttl_s": 1e999}'),
        {"ttl_s"},
    ),
    Bad(
        "ttl-huge-integer",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        raw(b'{"name": "x", "role": "viewer", "ttl_s": 1' + b"0" * 400 + b"}"),
        {"ttl_s"},
    ),
    Bad("body-is-array", "POST", TOKENS, 422, "validation_failed", as_json([new_token()]), {""}),
    Bad("body-is-string", "POST", TOKENS, 422, "validation_failed", as_json("token"), {""}),
    Bad(
        "body-at-size-limit",
        "POST",
        TOKENS,
        422,
        "validation_failed",
        raw(b" " * (MAX_BODY - 2) + b"{}"),
        {"name", "role"},
    ),
    Bad(
        "session-token-number",
        "POST",
        SESSION,
        422,
        "validation_failed",
        as_json({"token": 5}),
        {"token"},
        admin=False,
    ),
    Bad(
        "session-token-too-long",
        "POST",
        SESSION,
        422,
        "validation_failed",
        as_json({"token": "apl_" + "x" * 300}),
        {"token"},
        admin=False,
    ),
    Bad(
        "session-unknown-field",
        "POST",
        SESSION,
        422,
        "validation_failed",
        as_json({"tok": "apl_x"}),
        {"tok", "token"},
        admin=False,
    ),
]

OVERSIZE = [
    Bad(
        "one-byte-over",
        "POST",
        TOKENS,
        413,
        "payload_too_large",
        raw(b" " * (MAX_BODY - 1) + b"{}"),
    ),
    Bad("twice-the-limit", "POST", TOKENS, 413, "payload_too_large", raw(b" " * (2 * MAX_BODY))),
    Bad("chunked-over", "POST", TOKENS, 413, "payload_too_large", chunked_oversize),
    Bad(
        "session-over",
        "POST",
        SESSION,
        413,
        "payload_too_large",
        raw(b" " * (MAX_BODY + 1)),
        admin=False,
    ),
]

ROUTES = [
    Bad("unknown-api-path", "GET", "/api/v1/nope", 404, "not_found", admin=False),
    Bad("unknown-version", "GET", "/api/v2/health", 404, "not_found", admin=False),
    Bad("below-a-leaf", "GET", "/api/v1/health/extra", 404, "not_found", admin=False),
    Bad("post-unknown", "POST", "/api/v1/nope", 404, "not_found", as_json({}), admin=False),
    Bad("unknown-as-admin", "GET", "/api/v1/admin/nope", 404, "not_found"),
    Bad("revoke-unknown-token", "DELETE", f"{TOKENS}/000000000000", 404, "token_not_found"),
    Bad("revoke-overlong-id", "DELETE", f"{TOKENS}/{'0' * 64}", 404, "token_not_found"),
    Bad("revoke-id-with-nul", "DELETE", f"{TOKENS}/a%00b", 404, "token_not_found"),
    Bad(
        "put-tokens",
        "PUT",
        TOKENS,
        405,
        "method_not_allowed",
        as_json(new_token()),
        allow={"GET", "POST"},
    ),
    Bad("patch-audit", "PATCH", "/api/v1/audit", 405, "method_not_allowed", allow={"GET"}),
    Bad(
        "delete-health",
        "DELETE",
        "/api/v1/health",
        405,
        "method_not_allowed",
        allow={"GET"},
        admin=False,
    ),
    Bad("get-backup", "GET", "/api/v1/admin/backup", 405, "method_not_allowed", allow={"POST"}),
    Bad("post-me", "POST", "/api/v1/auth/me", 405, "method_not_allowed", allow={"GET"}),
    Bad(
        "get-session",
        "GET",
        SESSION,
        405,
        "method_not_allowed",
        allow={"POST", "DELETE"},
        admin=False,
    ),
]


def audit_query(query: str, status: int = 422, fields: set[str] | None = None) -> Bad:
    name = query.split("=")[0]
    return Bad(
        f"audit?{query}",
        "GET",
        f"/api/v1/audit?{query}",
        status,
        "validation_failed",
        fields=fields if fields is not None else {name},
    )


QUERIES = [
    audit_query("limit=0"),
    audit_query("limit=1001"),
    audit_query("limit=-1"),
    audit_query("limit=abc"),
    audit_query("limit=1.5"),
    audit_query("limit="),
    audit_query("limit=%C2%B2"),  # "²": str.isdigit() says yes, int() says no
    audit_query("after=-1"),
    audit_query("after=x"),
    audit_query(f"after={2**63 + 1}"),
    audit_query("order=sideways"),
]

ALL = MALFORMED + MEDIA_TYPES + INVALID + OVERSIZE + ROUTES + QUERIES


@pytest.fixture(scope="module")
def admin_token(shared_appliance) -> str:
    # A token of its own keeps these requests in a rate-limit bucket of their own.
    with shared_appliance.client(shared_appliance.token) as http:
        response = http.post(TOKENS, json={"name": "bad-input-admin", "role": "admin"})
    assert response.status_code == 201
    return response.json()["token"]


def send(appliance, case: Bad, token: str):
    # One connection per request: a refused body must not leave a reused connection behind.
    with appliance.client(token if case.admin else None) as http:
        return http.request(case.method, case.path, **case.request())


@pytest.mark.parametrize("case", ALL, ids=[case.id for case in ALL])
def test_bad_input_is_refused_precisely(shared_appliance, admin_token, assert_problem, case):
    response = send(shared_appliance, case, admin_token)
    body = assert_problem(response, case.status, case.code)
    if case.status == 422:
        assert isinstance(body.get("errors"), list), body
        named = {error["field"] for error in body["errors"]}
        assert named == case.fields, body
        assert all(
            isinstance(error["message"], str) and error["message"] for error in body["errors"]
        )
    if case.status == 405:
        allowed = {method.strip() for method in response.headers["allow"].split(",")}
        assert case.allow <= allowed
        assert case.method not in allowed
    else:
        assert "allow" not in response.headers
    if case.status == 400:
        assert body["detail"].startswith("the body is not valid JSON")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_literals_are_named_in_the_refusal(
    shared_appliance, admin_token, assert_problem, literal
):
    with shared_appliance.client(admin_token) as http:
        response = http.post(
            TOKENS,
            headers=JSON,
            content=b'{"name": "x", "role": "viewer", "ttl_s": ' + literal + b"}",
        )
    body = assert_problem(response, 400, "malformed_json")
    assert literal.decode() in body["detail"]


def test_connection_is_usable_after_a_refused_oversized_body(
    shared_appliance, admin_token, assert_problem
):
    """The 413 is sent before the body is read: the server must close that connection
    (`Connection: close`), or the client's next request on it waits for ever."""
    with shared_appliance.client(admin_token) as http:
        response = http.post(TOKENS, headers=JSON, content=b" " * (2 * MAX_BODY))
        assert_problem(response, 413, "payload_too_large")
        assert response.headers.get("connection") == "close"
        follow_up = http.get("/api/v1/health")
        assert follow_up.status_code == 200


def test_bad_input_leaves_no_trace(shared_appliance, assert_problem):
    with shared_appliance.client(shared_appliance.token) as http:
        response = http.post(TOKENS, json={"name": "bad-input-sweeper", "role": "admin"})
        assert response.status_code == 201
        sweeper = response.json()["token"]
        before = http.get(TOKENS).json()["tokens"]

    anomalies = []
    for case in ALL:
        response = send(shared_appliance, case, sweeper)
        if (
            response.status_code >= 500
            or response.headers["content-type"] != "application/problem+json"
        ):
            anomalies.append((case.id, response.status_code, response.headers["content-type"]))

    with shared_appliance.client(shared_appliance.token) as http:
        health = http.get("/api/v1/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert http.get(TOKENS).json()["tokens"] == before
        verify = http.get("/api/v1/audit/verify").json()
        assert verify["ok"] is True and verify["problems"] == []
    assert anomalies == [], "answered with a 5xx or not as a problem"
    assert "Traceback" not in shared_appliance.log()


def test_invented_methods_do_not_grow_the_metrics(shared_appliance, admin_token, assert_problem):
    """HTTP allows any token as a method; labelling metrics with it verbatim lets any
    client create unbounded time series (memory) with one request each."""
    invented = [f"X{secrets.token_hex(4).upper()}" for _ in range(3)]
    with shared_appliance.client() as http:
        for method in invented:
            assert_problem(http.request(method, "/api/v1/health"), 405, "method_not_allowed")
            assert_problem(http.request(method, "/api/v1/nope"), 404, "not_found")
    with shared_appliance.client(admin_token) as http:
        metrics = http.get("/api/v1/metrics")
    assert metrics.status_code == 200
    assert 'method="GET"' in metrics.text
    leaked = [line for line in metrics.text.splitlines() if any(m in line for m in invented)]
    assert leaked == []
