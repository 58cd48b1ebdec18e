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
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import trio

from appliance.config.errors import Gone
from appliance.config.service import ConfigService

KEEPALIVE_S = 15.0
BATCH = 1000
KEEPALIVE = b": keep-alive\n\n"
# (Cache-Control is every response's `no-store`, see appliance/api/security.py.)
HEADERS = {"X-Accel-Buffering": "no"}  # nginx and friends: pass each event on as it comes
CONTENT_TYPE = "text/event-stream"


def render_changes(changes: list, prefix: str) -> bytes:
    return "".join(
        f"id: {change.revision}\nevent: change\ndata: {change.event_json}\n\n"
        for change in changes
        if change.key.startswith(prefix)
    ).encode()


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
            changes = config.changes_after(last, BATCH)
        except Gone as exc:
            yield render_reset(exc, last)
            return
        if changes:
            last = changes[-1].revision
            chunk = render_changes(changes, prefix)
            if chunk or trio.current_time() - sent_at >= keepalive_s:
                # (changes under other prefixes only: still say we are alive)
                yield chunk or KEEPALIVE
                sent_at = trio.current_time()
            continue
        quiet = max(sent_at + keepalive_s - trio.current_time(), 0.0)
        # One cheap wait (no nursery per change): the notifier is closed when the stop
        # begins, which ends this wait too.
        with trio.move_on_after(quiet):
            await config.notifier.wait_beyond(last)
        if config.notifier.revision <= last and not stopping.is_set():
            yield KEEPALIVE
            sent_at = trio.current_time()
