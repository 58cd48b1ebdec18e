"""Per-principal rate limits (429 with Retry-After) and the security headers on every answer."""

from __future__ import annotations

import pytest

from appliance.store import Store

TOKENS = "/api/v1/auth/tokens"
ME = "/api/v1/auth/me"
REQUIRED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def assert_security_headers(response) -> None:
    for name, value in REQUIRED_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)
    csp = {
        directive.strip() for directive in response.headers["Content-Security-Policy"].split(";")
    }
    assert {
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    } <= csp
    assert "server" not in response.headers
    assert "strict-transport-security" not in response.headers  # plain http


@pytest.fixture
def limited(start_appliance, tmp_path):
    config = tmp_path / "appliance.toml"
    config.write_text("[ratelimit]\nrate = 1.0\nburst = 3\n")
    return start_appliance(config=config)


def test_the_fourth_quick_request_is_rate_limited(limited, assert_problem):
    with limited.client(limited.token) as admin:
        created = [
            admin.post(TOKENS, json={"name": name, "role": role})
            for name, role in (
                ("rl-viewer", "viewer"),
                ("rl-operator", "operator"),
                ("rl-third", "viewer"),
            )
        ]
        assert [r.status_code for r in created] == [201, 201, 201]
        refused = admin.post(TOKENS, json={"name": "rl-fourth", "role": "viewer"})
    body = assert_problem(refused, 429, "rate_limited")
    assert body["detail"] == "too many requests; slow down"
    retry_after = refused.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    assert_security_headers(refused)

    # The refused request did nothing: read the store from here (the admin is throttled).
    store = Store.open(limited.data_dir / "store", readonly=True)
    try:
        names = {value["name"] for _, value in store.scan("tokens")}
    finally:
        store.close()
    assert {"rl-viewer", "rl-operator", "rl-third"} <= names
    assert "rl-fourth" not in names

    viewer, operator = (r.json()["token"] for r in created[:2])
    with limited.client(viewer) as http:
        statuses = [http.get(ME).status_code for _ in range(3)]
        fourth, fifth = http.get(ME), http.get(ME)
    assert statuses == [200, 200, 200]
    assert_problem(fourth, 429, "rate_limited")
    assert_problem(fifth, 429, "rate_limited")
    assert int(fourth.headers["Retry-After"]) >= 1

    # Other principals have buckets of their own.
    with limited.client(operator) as http:
        other = http.get(ME)
    assert other.status_code == 200
    assert other.json()["role"] == "operator"


def test_rate_limited_callers_stay_limited_when_they_switch_to_a_session(limited, assert_problem):
    """A session is its token's principal: it shares the token's bucket."""
    with limited.client(limited.token) as admin:
        token = admin.post(TOKENS, json={"name": "rl-session", "role": "viewer"}).json()
    with limited.client(token["token"]) as http:
        session = http.post("/api/v1/auth/session")
        assert session.status_code == 201
        assert [http.get(ME).status_code for _ in range(2)] == [200, 200]
    cookie = session.cookies["appliance_session"]
    with limited.client() as http:
        response = http.get(ME, headers={"Cookie": f"appliance_session={cookie}"})
    assert_problem(response, 429, "rate_limited")


REQUESTS = {
    "200-health": ("GET", "/api/v1/health", None, {}, 200),
    "200-openapi": ("GET", "/api/v1/openapi.json", None, {}, 200),
    "200-authenticated": ("GET", TOKENS, "admin", {}, 200),
    "200-backup-stream": ("POST", "/api/v1/admin/backup", "admin", {}, 200),
    "401-no-token": ("GET", ME, None, {}, 401),
    "403-too-low-role": ("GET", TOKENS, "viewer", {}, 403),
    "404-unknown": ("GET", "/api/v1/nope", None, {}, 404),
    "404-unknown-token": ("DELETE", f"{TOKENS}/000000000000", "admin", {}, 404),
    "405-wrong-method": ("PUT", "/api/v1/health", None, {}, 405),
    "400-malformed": (
        "POST",
        TOKENS,
        "admin",
        {"content": b"{", "headers": {"Content-Type": "application/json"}},
        400,
    ),
    "415-media-type": ("POST", TOKENS, "admin", {"content": b"{}"}, 415),
    "422-invalid": ("POST", TOKENS, "admin", {"json": {}}, 422),
    "413-too-large": (
        "POST",
        TOKENS,
        "admin",
        {"content": b" " * (2 << 20), "headers": {"Content-Type": "application/json"}},
        413,
    ),
}


@pytest.fixture(scope="module")
def viewer_token(shared_appliance) -> str:
    with shared_appliance.client(shared_appliance.token) as http:
        response = http.post(TOKENS, json={"name": "headers-viewer", "role": "viewer"})
    assert response.status_code == 201
    return response.json()["token"]


@pytest.mark.parametrize("name", REQUESTS, ids=REQUESTS)
def test_security_headers_are_on_every_response(shared_appliance, viewer_token, name):
    method, path, who, kwargs, status = REQUESTS[name]
    token = {"admin": shared_appliance.token, "viewer": viewer_token, None: None}[who]
    with shared_appliance.client(token) as http:
        response = http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert_security_headers(response)
    assert response.headers["Cache-Control"] == "no-store"
    if status >= 400:
        assert response.headers["content-type"] == "application/problem+json"
