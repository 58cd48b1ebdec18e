"""Tokens, the caller's identity and web sessions."""

from __future__ import annotations

from quart import Blueprint, Response, g, jsonify, request

from appliance.api.bodies import Field, parse_json, validate
from appliance.api.guard import bearer_token, context, public, requires
from appliance.api.problems import Problem
from appliance.auth import ROLES, Unauthenticated
from appliance.auth.sessions import COOKIE_NAME
from appliance.auth.tokens import TokenNotFound
from appliance.bus.principal import MAX_TOKEN_PATTERNS, TokenPatternError

blueprint = Blueprint("auth", __name__)

NEW_TOKEN = {
    "name": Field(str, min_length=1, max_length=64, printable=True),
    "role": Field(str, choices=ROLES),
    "ttl_s": Field((int, float), required=False, minimum=60, maximum=10 * 365 * 86400),
    # Bus topic patterns replacing the role's (never beyond it); checked by the store.
    "bus_publish": Field(list, required=False, max_length=MAX_TOKEN_PATTERNS),
    "bus_subscribe": Field(list, required=False, max_length=MAX_TOKEN_PATTERNS),
}
NEW_SESSION = {"token": Field(str, max_length=256)}


async def json_body(shape: dict[str, Field]) -> dict:
    return validate(parse_json(await request.get_data(), request.content_type), shape)


@blueprint.post("/api/v1/auth/tokens")
@requires("admin")
async def create_token() -> tuple[Response, int]:
    body = await json_body(NEW_TOKEN)
    try:
        record, token = await context().tokens.create(
            body["name"],
            body["role"],
            ttl_s=body.get("ttl_s"),
            created_by=g.principal.label,
            bus_publish=body.get("bus_publish"),
            bus_subscribe=body.get("bus_subscribe"),
        )
    except TokenPatternError as exc:
        raise Problem(
            422, exc.code, str(exc), errors=[{"field": exc.field, "message": str(exc)}]
        ) from None
    except ValueError as exc:
        raise Problem(422, "validation_failed", str(exc)) from None
    g.audit_target = f"token:{record.id}"
    return jsonify({**record.public(), "token": token}), 201


@blueprint.get("/api/v1/auth/tokens")
@requires("admin")
async def list_tokens() -> Response:
    return jsonify({"tokens": [record.public() for record in context().tokens.list()]})


@blueprint.delete("/api/v1/auth/tokens/<token_id>")
@requires("admin")
async def revoke_token(token_id: str) -> Response:
    if context().tokens.get(token_id) is None:  # also refuses ids that cannot be keys
        raise Problem(404, "token_not_found", f"no token {token_id!r}")
    try:
        record = await context().tokens.revoke(token_id)
    except TokenNotFound:
        raise Problem(404, "token_not_found", f"no token {token_id!r}") from None
    g.audit_target = f"token:{token_id}"
    return jsonify(record.public())


@blueprint.get("/api/v1/auth/me")
@requires("viewer")
async def me() -> Response:
    principal = g.principal
    body = {
        "token_id": principal.token_id,
        "name": principal.name,
        "role": principal.role,
        "via_session": principal.via_session,
    }
    if principal.via_session:
        body["csrf_token"] = principal.session_csrf
    return jsonify(body)


@blueprint.post("/api/v1/auth/session")
@public
async def create_session() -> tuple[Response, int]:
    """Trade a token (Authorization header or `{"token": ...}`) for a session cookie."""
    ctx = context()
    token = bearer_token()
    if token is None:
        token = (await json_body(NEW_SESSION))["token"]
    try:
        principal = ctx.tokens.authenticate(token)
    except Unauthenticated as exc:
        g.auth_error = exc
        raise
    g.principal = principal
    session = await ctx.sessions.create(principal)
    response = jsonify(
        {"role": principal.role, "csrf_token": session.csrf_token, "expires_at": session.expires_at}
    )
    response.set_cookie(
        COOKIE_NAME,
        session.session_id,
        max_age=int(ctx.sessions.ttl_s),
        httponly=True,
        samesite="Strict",
        secure=request.scheme == "https",
        path="/",
    )
    return response, 201


@blueprint.delete("/api/v1/auth/session")
@requires("viewer")
async def delete_session() -> Response:
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie is None:
        raise Problem(400, "no_session", "this request carries no session cookie")
    await context().sessions.delete(cookie)
    response = jsonify({"ended": True})
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Strict")
    return response
