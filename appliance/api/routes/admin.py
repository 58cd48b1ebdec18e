"""Backup and the audit log."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator

import trio
from quart import Blueprint, Response, jsonify, request

from appliance.api.guard import context, requires
from appliance.api.problems import Problem

blueprint = Blueprint("admin", __name__)
CHUNK = 256 * 1024


@blueprint.post("/api/v1/admin/backup")
@requires("admin")
async def backup() -> Response:
    """Stream a compacted copy of the store: save it as `data.mdb` in an empty directory."""
    store = context().store
    spool_dir = store.path.parent / "run"
    spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The copy goes to an unlinked file next to the store, then streams from there, so a
    # slow client never holds LMDB's read transaction open (that would pin old pages).
    handle = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - closed by the stream
    try:
        await trio.to_thread.run_sync(store.backup_to_fd, handle.fileno())
        size = os.fstat(handle.fileno()).st_size
    except BaseException:
        handle.close()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            offset = 0
            while offset < size:
                data = await trio.to_thread.run_sync(os.pread, handle.fileno(), CHUNK, offset)
                if not data:
                    break
                offset += len(data)
                yield data
        finally:
            handle.close()

    response = Response(chunks(), content_type="application/octet-stream")
    response.headers["Content-Disposition"] = 'attachment; filename="data.mdb"'
    response.headers["Content-Length"] = str(size)
    return response


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise Problem(
            422,
            "validation_failed",
            f"{name} must be an integer {low}-{high}",
            errors=[{"field": name, "message": f"expected {low}-{high}"}],
        )
    return int(raw)


@blueprint.get("/api/v1/audit")
@requires("admin")
async def audit() -> Response:
    after = _int_arg("after", 0, 0, 2**63)
    limit = _int_arg("limit", 100, 1, 1000)
    order = request.args.get("order", "asc")
    if order not in ("asc", "desc"):
        raise Problem(
            422,
            "validation_failed",
            "order must be asc or desc",
            errors=[{"field": "order", "message": "expected asc or desc"}],
        )
    newest_first = order == "desc"
    entries = context().audit.entries(after=after, limit=limit, newest_first=newest_first)
    return jsonify({"entries": [entry.public() for entry in entries]})


@blueprint.get("/api/v1/audit/verify")
@requires("admin")
async def audit_verify() -> Response:
    result = await trio.to_thread.run_sync(context().audit.verify)
    return jsonify({"ok": result.ok, "entries": result.entries, "problems": list(result.problems)})
