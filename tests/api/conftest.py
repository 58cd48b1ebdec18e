"""Helpers shared by the API tests: problem-detail checks and token creation over HTTP."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

PROBLEM_TYPE = "application/problem+json"
PROBLEM_MEMBERS = ("type", "title", "status", "code", "detail")


def check_problem(response: httpx.Response, status: int, code: str) -> dict:
    """The response is an RFC 9457 problem with this status and stable code; return its body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == PROBLEM_TYPE, response.headers
    body = response.json()
    missing = [member for member in PROBLEM_MEMBERS if member not in body]
    assert not missing, f"problem lacks {missing}: {body}"
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"].endswith("/" + code)
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["instance"] == response.request.url.path
    return body


@pytest.fixture
def assert_problem() -> Callable[[httpx.Response, int, str], dict]:
    return check_problem


def create_token(
    appliance, name: str, role: str, *, admin_token: str | None = None, **extra
) -> dict:
    """Create a token through the API as the bootstrap admin (or `admin_token`)."""
    with appliance.client(admin_token or appliance.token) as http:
        response = http.post("/api/v1/auth/tokens", json={"name": name, "role": role, **extra})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["token"].startswith(f"apl_{body['id']}_")
    return body


@pytest.fixture
def new_token() -> Callable[..., dict]:
    return create_token
