"""Every exception maps to one problem shape with a stable code (sans-IO, no server)."""

import json

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound, RequestEntityTooLarge

from appliance.api.problems import Problem, problem_for_exception
from appliance.auth.errors import CsrfRejected, Forbidden, Unauthenticated
from appliance.store import StoreClosed, StoreFull, StoreIOError


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (RuntimeError("a bug"), 500, "internal_error"),
        (KeyError("x"), 500, "internal_error"),
        (NotFound(), 404, "not_found"),
        (MethodNotAllowed(valid_methods=["GET", "HEAD"]), 405, "method_not_allowed"),
        (RequestEntityTooLarge(), 413, "payload_too_large"),
        (Unauthenticated("unknown token"), 401, "unauthenticated"),
        (Forbidden("needs admin"), 403, "forbidden"),
        (CsrfRejected("no header"), 403, "csrf_rejected"),
        (StoreFull("disk"), 507, "storage_full"),
        (StoreClosed("closed"), 503, "stopping"),
        (StoreIOError("eio"), 503, "storage_unavailable"),
        (Problem(429, "rate_limited", "slow down"), 429, "rate_limited"),
    ],
)
def test_exceptions_become_problems(exc, status, code):
    problem = problem_for_exception(exc)
    body = json.loads(problem.render("/api/v1/x"))
    assert (problem.status, body["status"], body["code"]) == (status, status, code)
    assert set(body) >= {"type", "title", "status", "code", "detail", "instance"}
    assert body["type"].endswith(code)


def test_internal_errors_do_not_leak_details():
    body = json.loads(problem_for_exception(RuntimeError("secret path /etc/x")).render())
    assert "secret" not in json.dumps(body)


def test_headers_that_go_with_problems():
    assert (
        problem_for_exception(Unauthenticated("x")).headers["WWW-Authenticate"].startswith("Bearer")
    )
    allow = problem_for_exception(MethodNotAllowed(valid_methods=["POST", "GET"])).headers
    assert allow["Allow"] == "GET, POST"
    assert problem_for_exception(StoreClosed("x")).headers["Retry-After"] == "5"
