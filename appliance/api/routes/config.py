"""The config replica over HTTP: effective content, versions, releases, keys, watch, feed.

A key is four path segments, `/api/v1/config/{tenant}/{app}/{env}/{name}`. Reads are the
viewer's; writes (new versions, release rules) the operator's and only on a hub; the
replication feed (`/config/log`, `/config/snapshot`) the replica role's. Errors of the model
(`ConfigError`) become problem details in appliance/api/problems.py. See docs/config.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
from quart import Blueprint, Response, g, jsonify, request

from appliance.api import config_read, sse
from appliance.api.bodies import Field, parse_json, validate
from appliance.api.config_read import etag, matches
from appliance.api.config_read import int_value as _int_value
from appliance.api.guard import context, requires
from appliance.api.longpoll import hold, wait_seconds
from appliance.api.problems import Problem
from appliance.config.keys import ConfigKey, parse_key, parse_prefix
from appliance.config.service import ConfigService
from appliance.settings import Settings

blueprint = Blueprint("config", __name__)
MAX_LOG_LIMIT = 1000
MAX_KEYS_LIMIT = 1000
KEY = config_read.ROUTE
NEW_VERSION = {
    "format": Field(str, max_length=16),
    "content": Field(str),
    "comment": Field(str, required=False),
}
NEW_RULES = {"rules": Field(list)}


def service() -> ConfigService:
    return config_read.service(context())


def version_body_limit(settings: Settings) -> int:
    """A new version's body: its content as a JSON string (escaping may make each byte up
    to six, `\\u0001`) plus the other fields; never less than any other body may be."""
    return max(settings.http.max_body_bytes, 6 * settings.config.max_content_bytes + 64 * 1024)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    return _int_value(name, raw, low, high)


def _key(tenant: str, app: str, env: str, name: str) -> ConfigKey:
    return parse_key(f"{tenant}/{app}/{env}/{name}")


def _key_record(config: ConfigService, key: ConfigKey) -> dict[str, Any]:
    record = config.repository.key_record(key)
    if record is None:
        raise Problem(404, "key_not_found", f"no key {key}")
    return record


# Keys.


@blueprint.get("/api/v1/config")
@requires("viewer")
async def list_keys() -> Response:
    """Keys in key order, from `after` (exclusive), under `prefix`, at most `limit`."""
    config = service()
    prefix = parse_prefix(request.args.get("prefix", ""))
    after = parse_prefix(request.args.get("after", ""))
    limit = _int_arg("limit", 100, 1, MAX_KEYS_LIMIT)
    records = config.repository.keys(prefix, limit, after)
    keys = [
        {
            "key": record["key"],
            "latest": record["latest"],
            "rules": len(record["rules"]),
            "revision": record["revision"],
            "created_at": record["created_at"],
        }
        for record in records
    ]
    following = keys[-1]["key"] if len(keys) == limit else None
    return jsonify({"keys": keys, "next": following, "revision": config.notifier.revision})


# The effective content.


@blueprint.get(KEY)
@requires("viewer")
async def effective(tenant: str, app: str, env: str, name: str) -> Response:
    """The content this box gets. With `If-None-Match` naming it, 304; with `?wait=S` as
    well, held until it changes (200 with the new content) or S seconds pass (304).
    `Front` answers the plain read of a token itself (appliance/api/config_read.py)."""
    config = service()
    key = _key(tenant, app, env, name)
    seconds = wait_seconds(request.args)
    if_none_match = request.headers.get("If-None-Match")
    seen = config.notifier.revision
    version, _ = config.effective(key)
    if matches(if_none_match, etag(version)) and seconds > 0:
        stopping = context().stopping
        deadline = trio.current_time() + seconds
        while not stopping.is_set() and (left := deadline - trio.current_time()) > 0:
            # Any change may move this key's effective version; re-resolve and compare.
            await hold(partial(config.notifier.wait_beyond, seen), left, stopping)
            if config.notifier.revision == seen:
                break  # the wait ran out, or the appliance is stopping
            seen = config.notifier.revision
            version, _ = config.effective(key)
            if not matches(if_none_match, etag(version)):
                break
    answer = config_read.answer(config, version, if_none_match)
    response = Response(answer.body, status=answer.status, headers=answer.headers)
    if answer.status == 304:  # quart would add text/html and a length of 0
        del response.headers["Content-Type"]
        del response.content_length
    return response


@blueprint.get(KEY + "/explain")
@requires("viewer")
async def explain(tenant: str, app: str, env: str, name: str) -> Response:
    """Which rule gives this box its version, and why each other rule does not."""
    return jsonify(service().explain(_key(tenant, app, env, name)))


# Versions.


@blueprint.get(KEY + "/versions")
@requires("viewer")
async def list_versions(tenant: str, app: str, env: str, name: str) -> Response:
    config = service()
    key = _key(tenant, app, env, name)
    record = _key_record(config, key)
    return jsonify(
        {
            "key": str(key),
            "latest": record["latest"],
            "versions": [version.summary() for version in config.repository.versions(key)],
        }
    )


@blueprint.get(KEY + "/versions/<number>")
@requires("viewer")
async def get_version(tenant: str, app: str, env: str, name: str, number: str) -> Response:
    config = service()
    key = _key(tenant, app, env, name)
    _key_record(config, key)
    wanted = _int_value("number", number, 1, 2**63 - 1)
    version = config.repository.version(key, wanted)
    if version is None:
        raise Problem(404, "version_not_found", f"{key} has no version {wanted}")
    return jsonify({"key": str(key), **version.record()})


@blueprint.post(KEY + "/versions")
@requires("operator")
async def add_version(tenant: str, app: str, env: str, name: str) -> tuple[Response, int]:
    """A new immutable version: `{format, content, comment?}`, content checked for its
    format. It is served only when the key has no rules or a rule names it."""
    config = service()
    key = _key(tenant, app, env, name)
    body = validate(parse_json(await request.get_data(), request.content_type), NEW_VERSION)
    g.audit_target = f"config:{key}"
    principal = g.principal
    version, revision = await config.add_version(
        key,
        body["format"],
        body["content"],
        author=f"{principal.name} ({principal.label})",
        comment=body.get("comment", ""),
    )
    return jsonify({"key": str(key), "version": version.summary(), "revision": revision}), 201


# Release rules.


def _rules_body(key: ConfigKey, rules: list[dict[str, Any]], revision: int) -> dict[str, Any]:
    return {"key": str(key), "rules": rules, "revision": revision}


@blueprint.get(KEY + "/releases")
@requires("viewer")
async def get_releases(tenant: str, app: str, env: str, name: str) -> Response:
    """The key's release rules, highest priority first, and the revision of its last change."""
    config = service()
    key = _key(tenant, app, env, name)
    record = _key_record(config, key)
    return jsonify(_rules_body(key, record["rules"], record["revision"]))


@blueprint.put(KEY + "/releases")
@requires("operator")
async def put_releases(tenant: str, app: str, env: str, name: str) -> Response:
    """Replace the key's release rules: `{"rules": [{labels, version, priority, percent?}]}`."""
    config = service()
    key = _key(tenant, app, env, name)
    body = validate(parse_json(await request.get_data(), request.content_type), NEW_RULES)
    g.audit_target = f"config:{key}"
    rules, revision = await config.set_rules(key, body["rules"])
    return jsonify(_rules_body(key, [rule.record() for rule in rules], revision))


# Watch.


@blueprint.get("/api/v1/config/watch")
@requires("viewer")
async def watch() -> Response:
    """Server-Sent Events: every change after the resume point (`Last-Event-ID`, else
    `?after=REV`, else now) under `?prefix=`, until the client leaves or we stop.
    `Front` serves a `Bearer` token's watch itself (appliance/api/sse.py `serve_watch`)."""
    config = service()
    resume = request.headers.get("Last-Event-ID")
    prefix, after = sse.watch_from(
        config, request.args.get("prefix", ""), resume, request.args.get("after")
    )
    events = sse.change_events(config, after, prefix, context().stopping)
    return Response(events, content_type=sse.CONTENT_TYPE, headers=sse.HEADERS)


# Replication.


@blueprint.get("/api/v1/config/log")
@requires("replica")
async def config_log() -> Response:
    """The replication feed: entries after `after`, held up to `wait` s when there are none."""
    config = service()
    after = _int_arg("after", 0, 0, 2**63 - 1)
    limit = _int_arg("limit", 500, 1, MAX_LOG_LIMIT)
    seconds = wait_seconds(request.args)
    entries, head = config.repository.log_after(after, limit)
    if not entries and seconds > 0:
        await hold(lambda: config.notifier.wait_beyond(after), seconds, context().stopping)
        entries, head = config.repository.log_after(after, limit)
    return jsonify(
        {
            "revision": head["revision"],
            "compacted_through": head["compacted_through"],
            "entries": entries,
        }
    )


@blueprint.get("/api/v1/config/snapshot")
@requires("replica")
async def config_snapshot() -> Response:
    """Every key with all its versions and rules, at one revision."""
    return jsonify(service().repository.snapshot())


@blueprint.get("/api/v1/config/status")
@requires("viewer")
async def config_status() -> Response:
    return jsonify(service().status())
