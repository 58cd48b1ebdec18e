"""RFC 9457 problem details: the one shape of every HTTP error, with a stable `code`.

Handlers raise `Problem`; `problem_for_exception` translates everything else (werkzeug's
HTTP errors, auth errors, store errors) in this one place.
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug.exceptions import HTTPException

from appliance.auth.errors import AuthError, Forbidden
from appliance.config.errors import ConfigError
from appliance.store import StoreClosed, StoreError, StoreFull

CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://appliance.invalid/problems/"

# Stable codes for werkzeug's errors, by status.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
}


class Problem(Exception):
    """An error to answer with: status, stable code, human detail, optional extra members."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str = "") -> dict[str, Any]:
        body = {
            "type": TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def render(self, instance: str = "") -> bytes:
        return json.dumps(self.body(instance)).encode()


def problem_for_exception(exc: BaseException) -> Problem:
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, ConfigError):
        return Problem(exc.status, exc.code, exc.message, **exc.extra)
    if isinstance(exc, AuthError):
        status = 403 if isinstance(exc, Forbidden) else 401
        headers = {} if status == 403 else {"WWW-Authenticate": 'Bearer realm="appliance"'}
        return Problem(status, exc.code, str(exc) or exc.code, headers=headers)
    if isinstance(exc, StoreFull):
        return Problem(507, "storage_full", str(exc))
    if isinstance(exc, StoreClosed):
        return Problem(503, "stopping", "the appliance is stopping", headers={"Retry-After": "5"})
    if isinstance(exc, StoreError):
        return Problem(503, "storage_unavailable", str(exc), headers={"Retry-After": "5"})
    if isinstance(exc, HTTPException) and exc.code is not None:
        code = HTTP_CODES.get(exc.code, f"http_{exc.code}")
        headers = {}
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return Problem(exc.code, code, exc.description or exc.name, title=exc.name, headers=headers)
    return Problem(500, "internal_error", "an unexpected error occurred; it has been logged")
