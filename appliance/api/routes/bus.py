"""The bus over HTTP: who is connected, what flows where, and publishing from outside.

`GET /api/v1/bus/peers` lists the endpoint's connections (node record, principal,
transport, counters), or with `?selector=` those whose node labels match (discovery).
`GET /api/v1/bus/topics` lists the topics seen recently with their counts and rates, and
the topics holding a retained value. `POST /api/v1/bus/publish` publishes a message as the
endpoint itself, delivered like any connection's publish; it needs a role that may publish
on the bus (operator, admin) and, when the token carries its own bus patterns, one of
them must match the topic, as on the bus.

Counts and rates come from `BusEndpoint.stats` (`appliance/bus/stats.py`, which says what
is counted and how memory stays bounded).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from quart import Blueprint, Response, g, jsonify, request

from appliance.api.bodies import Field, parse_json, validate
from appliance.api.guard import context, requires
from appliance.api.problems import Problem
from appliance.bus import messages as m
from appliance.bus.endpoint import MessageTooLarge
from appliance.bus.principal import token_principal
from appliance.bus.reasons import InvalidMessage
from appliance.bus.selectors import SelectorError
from appliance.bus.topics import MAX_TOPIC_LENGTH, TopicError, split_topic
from appliance.settings import Settings

blueprint = Blueprint("bus", __name__)

MAX_TOPICS_LISTED = 10_000
DEFAULT_TOPICS_LISTED = 1000

NEW_MESSAGE = {
    "topic": Field(str, max_length=MAX_TOPIC_LENGTH),
    "data": Field(str, required=False),
    "data_base64": Field(str, required=False),
    "retain": Field(bool, required=False),
    "headers": Field(dict, required=False),
}


def publish_body_limit(settings: Settings) -> int:
    """A publish body may hold a payload of up to a bus frame, base64 or JSON-escaped."""
    return settings.bus.max_frame * 2 + 64 * 1024


def endpoint() -> Any:
    found = context().bus
    if found is None:
        raise Problem(503, "bus_unavailable", "the bus endpoint is not running")
    return found


@blueprint.get("/api/v1/bus/peers")
@requires("viewer")
async def list_peers() -> Response:
    bus = endpoint()
    selector = request.args.get("selector")
    if selector is None:
        ids = sorted(bus.peers)
    else:
        if len(selector.encode()) > m.MAX_SELECTOR:
            raise _invalid_selector(f"longer than {m.MAX_SELECTOR} bytes")
        try:
            ids = sorted(node.record for node in bus.router.query(selector))
        except SelectorError as exc:
            raise _invalid_selector(str(exc)) from None
    connections = [_describe(bus, bus.peers[i]) for i in ids if i in bus.peers]
    return jsonify({"endpoint": bus.node.to_wire(), "connections": connections})


def _invalid_selector(message: str) -> Problem:
    return Problem(
        400,
        "invalid_selector",
        f"selector: {message}",
        errors=[{"field": "selector", "message": message}],
    )


def _describe(bus: Any, peer: Any) -> dict[str, Any]:
    conn = peer.conn
    principal = conn.principal
    stats = bus.stats.connections.get(peer.id)
    return {
        "id": peer.id,
        "state": conn.state.value,
        "node": conn.peer_node.to_wire() if conn.peer_node is not None else None,
        "principal": (
            {"name": principal.name, "role": principal.role} if principal is not None else None
        ),
        "link": bus.router.is_link(peer.id),  # another endpoint, relaying for its nodes
        "subscriptions": len(peer.queues),
        **(stats.public() if stats is not None else {}),
    }


@blueprint.get("/api/v1/bus/topics")
@requires("viewer")
async def list_topics() -> Response:
    bus = endpoint()
    prefix = request.args.get("prefix", "")
    if len(prefix) > MAX_TOPIC_LENGTH:
        raise _invalid_query("prefix", f"longer than {MAX_TOPIC_LENGTH} characters")
    raw_limit = request.args.get("limit", str(DEFAULT_TOPICS_LISTED))
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not (
        1 <= int(raw_limit) <= MAX_TOPICS_LISTED
    ):
        raise _invalid_query("limit", f"expected 1-{MAX_TOPICS_LISTED}")
    stats = bus.stats
    now = stats.clock()
    rows: dict[str, dict[str, Any]] = {}
    for topic in stats.topics(prefix):
        rows[topic.topic] = {
            "topic": topic.topic,
            "messages": topic.messages,
            "bytes": topic.bytes,
            "deliveries": topic.deliveries,
            "dropped": topic.dropped,
            "rate": round(topic.rate(now), 3),
            "retained": False,
        }
    retained = bus.router.retained
    for value in retained if retained is not None else ():
        if value.topic.startswith(prefix):
            row = rows.get(value.topic) or rows.setdefault(value.topic, _quiet(value.topic))
            row["retained"] = True
    names = sorted(rows)
    limit = int(raw_limit)
    totals = stats.totals
    return jsonify(
        {
            "topics": [rows[name] for name in names[:limit]],
            "truncated": len(names) > limit,
            "tracked": len(stats),
            "max_tracked": stats.max_topics,
            "evicted": stats.evicted_topics,
            "window_s": stats.window_s,
            "totals": {
                "messages": totals.messages,
                "bytes": totals.bytes,
                "deliveries": totals.deliveries,
                "dropped": totals.dropped,
            },
        }
    )


def _quiet(topic: str) -> dict[str, Any]:
    """A retained topic with no recent traffic counted (or counted before its eviction)."""
    return {
        "topic": topic,
        "messages": 0,
        "bytes": 0,
        "deliveries": 0,
        "dropped": 0,
        "rate": 0.0,
        "retained": True,
    }


def _invalid_query(name: str, message: str) -> Problem:
    return Problem(
        422, "validation_failed", f"{name}: {message}", errors=[{"field": name, "message": message}]
    )


@blueprint.post("/api/v1/bus/publish")
@requires("operator")
async def publish_message() -> tuple[Response, int]:
    bus = endpoint()
    body = validate(parse_json(await request.get_data(), request.content_type), NEW_MESSAGE)
    topic = body["topic"]
    try:
        tokens = split_topic(topic)
    except TopicError as exc:
        raise Problem(
            422, "invalid_topic", str(exc), errors=[{"field": "topic", "message": str(exc)}]
        ) from None
    principal = g.principal
    permissions = token_principal(
        principal.name,
        principal.role,
        getattr(principal, "bus_publish", None),
        getattr(principal, "bus_subscribe", None),
    ).permissions
    if not permissions.may_publish(tokens):
        raise Problem(403, "forbidden", f"this token may not publish to {topic} on the bus")
    data = _payload(body)
    headers = body.get("headers", {})
    g.audit_target = f"bus:{topic}"
    try:
        deliveries = await bus.publish(
            topic, data, retain=body.get("retain", False), headers=headers
        )
    except InvalidMessage as exc:
        field = exc.field.removeprefix("publish.") or "body"
        message = f"{exc.problem}: {exc.detail}"
        raise Problem(
            422,
            "validation_failed",
            f"{field}: {message}",
            errors=[{"field": field, "message": message}],
        ) from None
    except MessageTooLarge as exc:
        raise Problem(413, exc.code, str(exc), limit=exc.limit) from None
    return jsonify(
        {
            "topic": topic,
            "bytes": len(data),
            "retained": body.get("retain", False),
            "deliveries": deliveries,
        }
    ), 202


def _payload(body: dict[str, Any]) -> bytes:
    """The message bytes: `data` as UTF-8 text, or `data_base64` (not both; neither: empty)."""
    if "data" in body and "data_base64" in body:
        raise Problem(
            422,
            "validation_failed",
            "give data or data_base64, not both",
            errors=[{"field": "data_base64", "message": "not with data"}],
        )
    if "data_base64" in body:
        try:
            return base64.b64decode(body["data_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise Problem(
                422,
                "validation_failed",
                "data_base64 is not valid base64",
                errors=[{"field": "data_base64", "message": "not valid base64"}],
            ) from None
    try:
        return body.get("data", "").encode()
    except UnicodeEncodeError:  # a lone surrogate escape (\ud800) in the JSON
        raise Problem(
            422,
            "validation_failed",
            "data is not valid Unicode text",
            errors=[{"field": "data", "message": "not valid Unicode text (use data_base64)"}],
        ) from None
