"""The config replica over HTTP: effective content, versions, releases, watch, the feed.

This module holds the replication side (`/config/log`, `/config/snapshot`) and the status;
see docs/config.md for the whole API.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from appliance.api.guard import context, requires
from appliance.api.longpoll import hold, wait_seconds
from appliance.api.problems import Problem

blueprint = Blueprint("config", __name__)
MAX_LOG_LIMIT = 1000


def service():
    found = context().config
    if found is None:
        raise Problem(503, "config_unavailable", "the config service is not running")
    return found


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or not low <= int(raw) <= high:
        raise Problem(
            422,
            "validation_failed",
            f"{name} must be an integer {low}-{high}",
            errors=[{"field": name, "message": f"expected an integer {low}-{high}"}],
        )
    return int(raw)


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
