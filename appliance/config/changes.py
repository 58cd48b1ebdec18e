"""One broadcast for every config watcher: SSE streams, long polls, and (later) the bus.

Watchers do not get a queue each. The notifier holds the current revision and one event
that is replaced on every change; a watcher remembers the last revision it has seen, waits
for the revision to pass it, and then reads what it missed: from the last RECENT entries
kept here (shared, decoded once, with their event JSON rendered once), or from the log in
the store when it fell further behind. So a slow watcher costs no memory while it lags:
it skips ahead in bigger steps (its own buffer is the log), and one whose place the log
has compacted away is told so and dropped. Nobody waits for anybody else.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from appliance.config.feed import event_of

RECENT = 1024


@dataclass(frozen=True)
class Change:
    revision: int
    key: str
    entry: dict[str, Any]
    event: dict[str, Any]
    event_json: str  # rendered once for every watcher


def change_of(entry: dict[str, Any]) -> Change:
    event = event_of(entry)
    return Change(entry["revision"], entry["key"], entry, event, json.dumps(event))


class ChangeNotifier:
    def __init__(self, revision: int) -> None:
        self.revision = revision
        self._changed = trio.Event()
        self._recent: deque[Change] = deque(maxlen=RECENT)
        self._listeners: list[Callable[[list[Change]], None]] = []
        self.closed = False
        # What watchers derive from the current revision and share (an SSE stream's bytes
        # for a resume point and prefix, say): emptied whenever the revision moves.
        self.shared: dict[Any, Any] = {}

    def published(self, entries: list[dict[str, Any]], revision: int | None = None) -> None:
        """Record committed entries (in revision order) and wake every watcher."""
        changes = [change_of(entry) for entry in entries]
        for change in changes:
            if self._recent and change.revision != self._recent[-1].revision + 1:
                self._recent.clear()  # a gap (a snapshot): older entries are no use
            self._recent.append(change)
        top = revision if revision is not None else (changes[-1].revision if changes else 0)
        if top > self.revision:
            self.revision = top
            self.shared = {}
            if revision is not None and not changes:
                self._recent.clear()  # a snapshot replaced everything
            woken, self._changed = self._changed, trio.Event()
            woken.set()
        for listener in self._listeners:
            listener(changes)

    def listen(self, listener: Callable[[list[Change]], None]) -> None:
        """Call `listener(changes)` synchronously on every publication (settings overlay)."""
        self._listeners.append(listener)

    async def wait_beyond(self, revision: int) -> int:
        """Return the current revision once it is greater than `revision`, or at once
        after `close` (the appliance is stopping: every watcher should wind up)."""
        while self.revision <= revision and not self.closed:
            await self._changed.wait()
        return self.revision

    def close(self) -> None:
        """Wake every waiter for good: from now on `wait_beyond` does not wait."""
        self.closed = True
        self._changed.set()

    def recent_after(self, revision: int) -> list[Change] | None:
        """Changes after `revision` from memory, or None when memory does not reach back."""
        if revision >= self.revision:
            return []
        if not self._recent or self._recent[0].revision > revision + 1:
            return None
        start = revision + 1 - self._recent[0].revision
        return [self._recent[i] for i in range(start, len(self._recent))]
