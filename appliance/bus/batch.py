"""Write batching for the endpoint: what one received chunk makes due goes out at its end.

    batch = WriteBatch()
    batch.begin()                      # a reader is about to act on one chunk's events
    ...peer.poke() for every connection given something to send...
    batch.end()                        # each poked connection flushes once (`Peer.flush`)

A reader acting on a chunk never yields to other tasks unless it must wait (a `block`
subscriber is full): writers woken meanwhile could not run before the chunk is done
anyway. So instead of waking each target's writer task (one task switch and one write
per target and per message), the reader collects the connections it gave something to
and, at the end of the chunk, writes to each of them once, itself, when that
connection's writer is idle (`Peer.flush`; a busy writer is woken as before). The order
of a connection's bytes is unchanged: every byte still comes out of `Peer._take_output`.

Only the task that began the batch collects (`collecting`); anybody else poking a
connection wakes its writer. Whoever must wait inside a batch ends it first (`end`).
The dirty set holds each connection at most once: bounded by the connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from appliance.bus.peer import Peer


class WriteBatch:
    def __init__(self) -> None:
        self._owner: trio.lowlevel.Task | None = None
        self._dirty: dict[int, Peer] = {}

    def begin(self) -> None:
        """The calling task collects from now until `end`."""
        if self._owner is not None:
            self.end()  # a batch left open (it cannot be, but never lose a wake-up)
        self._owner = trio.lowlevel.current_task()

    def collecting(self) -> bool:
        """Is the calling task the one collecting?"""
        return self._owner is not None and self._owner is trio.lowlevel.current_task()

    def add(self, peer: Peer) -> None:
        self._dirty[peer.id] = peer

    def end(self) -> None:
        """Stop collecting and flush every connection collected, in the order poked."""
        self._owner = None
        while self._dirty:
            dirty, self._dirty = self._dirty, {}
            for peer in dirty.values():
                peer.flush()
