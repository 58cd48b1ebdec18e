"""Who is asking, may they, and how often: run before every API request.

`identify` resolves the principal from `Authorization: Bearer` or the session cookie and
applies the rate limit (per token, or per client address for anonymous callers). Route
handlers declare what they need with `@requires(role)`; cookie-authenticated writes must
also carry the CSRF header.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from quart import current_app, g, request

from appliance.api.context import ApiContext
from appliance.api.problems import Problem
from appliance.auth import Forbidden, Principal, Unauthenticated, role_allows
from appliance.auth.ratelimit import retry_after_header
from appliance.auth.sessions import COOKIE_NAME, CSRF_HEADER, check_csrf

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ROLE_ATTRIBUTE = "_required_role"


def context() -> ApiContext:
    return current_app.config["APPLIANCE"]


def bearer_token() -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return value.strip()


def authenticate(ctx: ApiContext) -> Principal | None:
    token = bearer_token()
    if token is not None:
        return ctx.tokens.authenticate(token)
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie is not None:
        return ctx.sessions.authenticate(cookie)
    return None


async def identify() -> None:
    ctx = context()
    g.principal = None
    g.auth_error = None
    try:
        g.principal = authenticate(ctx)
    except Unauthenticated as exc:
        g.auth_error = exc
        ctx.metrics.auth_failures.labels(reason=str(exc)).inc()
    take_rate_token(ctx, g.principal.label if g.principal else f"addr:{request.remote_addr}")


def take_rate_token(ctx: ApiContext, key: str) -> None:
    """Take a request from `key`'s bucket, or raise the 429 problem (counted) when empty.
    The key is a principal's label, or `addr:<ip>` for a request without one."""
    wait = ctx.limiter.acquire(key)
    if wait:
        ctx.metrics.rate_limited.inc()
        raise Problem(
            429,
            "rate_limited",
            "too many requests; slow down",
            headers={"Retry-After": retry_after_header(wait)},
        )


def requires(role: str) -> Callable[[F], F]:
    """The route needs a principal of at least `role`."""

    def decorate(handler: F) -> F:
        @wraps(handler)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            principal: Principal | None = g.principal
            if principal is None:
                if g.auth_error is not None:
                    raise g.auth_error
                raise Unauthenticated("credentials required: 'Authorization: Bearer <token>'")
            if not role_allows(principal.role, role):
                raise Forbidden(f"this needs the {role} role; the token has {principal.role}")
            if request.method in MUTATING:
                check_csrf(principal, request.headers.get(CSRF_HEADER))
            return await handler(*args, **kwargs)

        setattr(guarded, ROLE_ATTRIBUTE, role)
        return guarded  # type: ignore[return-value]

    return decorate


def public(handler: F) -> F:
    """The route needs no credentials (health, the OpenAPI document, making a session)."""
    setattr(handler, ROLE_ATTRIBUTE, None)
    return handler
