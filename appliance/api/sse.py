"""Server-Sent Events for config watchers: one stream per client, no queue per client.

A stream remembers the last revision it has told its client about, waits on the shared
notifier for the revision to pass it, and then reads what it missed from the service (from
the notifier's recent changes, or from the log when it fell further behind). Each change
goes out as

    id: <revision>
    event: change
    data: <the change's event JSON, rendered once for every watcher>

several changes to one write. After KEEPALIVE_S of silence it sends a `: keep-alive`
comment, so proxies and clients see a live connection. A watcher whose place the log has
compacted away is sent one `reset` event and the stream ends; so does every stream when the
appliance begins to stop. A client that disconnects cancels the generator where it waits.

No cancel scope or nursery is held across a `yield`: each wait opens and closes its own,
so the consumer's sends never run inside our scopes.

`Front` serves the watches of a `Bearer` token itself (`serve_watch`: the same checks,
headers and bytes as the quart route, one ASGI send per wake); both start with `watch_from`.
Watchers woken by the same change mostly want the same bytes: the chunk for a resume
point and a prefix is rendered once per revision and shared (`ChangeNotifier.shared`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio

from appliance.api.config_read import int_value
from appliance.api.problems import Problem
from appliance.config.errors import Gone
from appliance.config.keys import parse_prefix
from appliance.config.service import ConfigService

KEEPALIVE_S = 15.0
BATCH = 1000
KEEPALIVE = b": keep-alive\n\n"
# (Cache-Control is every response's `no-store`, see appliance/api/security.py.)
HEADERS = {"X-Accel-Buffering": "no"}  # nginx and friends: pass each event on as it comes
CONTENT_TYPE = "text/event-stream"
MAX_SHARED = 256  # chunks shared per revision (distinct resume points and prefixes)


def render_changes(changes: list, prefix: str) -> bytes:
    return "".join(
        f"id: {change.revision}\nevent: change\ndata: {change.event_json}\n\n"
        for change in changes
        if change.key.startswith(prefix)
    ).encode()


def watch_from(
    config: ConfigService, prefix: str, last_event_id: str | None, after: str | None
) -> tuple[str, int]:
    """The watch's prefix and resume point (`Last-Event-ID`, else `?after=`, else now), or
    the problem: 422 for a bad prefix or number, 409 `revision_ahead`, 410
    `revision_compacted` (checked here, before the stream starts)."""
    prefix = parse_prefix(prefix)
    current = config.notifier.revision
    if last_event_id is not None:
        resume = int_value("Last-Event-ID", last_event_id.strip(), 0, 2**63 - 1)
    elif after is not None:
        resume = int_value("after", after, 0, 2**63 - 1)
    else:
        resume = current
    if resume > current:
        raise Problem(
            409,
            "revision_ahead",
            f"this box is at revision {current}; {resume} is ahead of it (another upstream, "
            "or a restored store): watch again without a resume point",
            revision=current,
        )
    config.repository.log_after(resume, 1)  # Gone: 410 revision_compacted
    return prefix, resume


def chunk_after(config: ConfigService, last: int, prefix: str) -> tuple[int, bytes]:
    """The revision a watcher at `last` reaches next (`last` when nothing is new) and its
    bytes for the changes up to it under `prefix` (maybe none). Shared by every watcher at
    the same place until the next change; raises Gone."""
    notifier = config.notifier
    if last >= notifier.revision:
        return last, b""
    shared = notifier.shared
    key = ("sse", last, prefix)
    found = shared.get(key)
    if found is None:
        changes = config.changes_after(last, BATCH)
        top = changes[-1].revision if changes else last
        found = (top, render_changes(changes, prefix))
        if len(shared) < MAX_SHARED:
            shared[key] = found
    return found


def render_reset(exc: Gone, last: int) -> bytes:
    data = {"reason": exc.code, "detail": exc.message, "last_event_id": last, **exc.extra}
    return f"event: reset\ndata: {json.dumps(data)}\n\n".encode()


async def change_events(
    config: ConfigService,
    after: int,
    prefix: str,
    stopping: trio.Event,
    *,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[bytes]:
    """The stream's bytes: the changes after `after` under `prefix`, as they happen."""
    last = after
    sent_at = trio.current_time()
    while not stopping.is_set():
        try:
            top, chunk = chunk_after(config, last, prefix)
        except Gone as exc:
            yield render_reset(exc, last)
            return
        if top > last:
            last = top
            if chunk or trio.current_time() - sent_at >= keepalive_s:
                # (changes under other prefixes only: still say we are alive)
                yield chunk or KEEPALIVE
                sent_at = trio.current_time()
            if last < config.notifier.revision:
                # Catching up batch by batch: let the others run between (a consumer's
                # send need not be a checkpoint, and neither is this loop otherwise).
                await trio.lowlevel.checkpoint()
            continue
        quiet = max(sent_at + keepalive_s - trio.current_time(), 0.0)
        # One cheap wait (no nursery per change): the notifier is closed when the stop
        # begins, which ends this wait too.
        with trio.move_on_after(quiet):
            await config.notifier.wait_beyond(last)
        if config.notifier.revision <= last and not stopping.is_set():
            yield KEEPALIVE
            sent_at = trio.current_time()
