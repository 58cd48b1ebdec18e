"""Backpressure for a streamed request body under Quart: one ASGI message per grant.

Quart reads a request's ASGI messages in a task of its own and appends them to
`request.body` as fast as the server delivers them, however slowly the handler consumes
them: a 200 MiB upload to a handler that writes to a slow disk would pile up in memory.
`pace_bodies(asgi_app, paths)` wraps the app so that, for `POST` to one of `paths`, Quart's
reader gets a `PacedBody.receive` instead of the server's `receive`: it lets one body
message through, then waits until the handler calls `grant()` (after it took the data) or
`open()` (it wants no more pacing). Meanwhile hypercorn's bounded queue fills and it stops
reading the socket, so TCP pushes back on the sender. The handler finds its `PacedBody` in
`request.scope[PACED_BODY]`.

Once the body's last message (or a disconnect) has passed, pacing stops, so Quart still
sees `http.disconnect` at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

import trio

__all__ = ["PACED_BODY", "PacedBody", "pace_bodies"]

PACED_BODY = "appliance.paced_body"
Receive = Callable[[], Awaitable[dict[str, Any]]]


class PacedBody:
    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._credit = trio.Semaphore(1, max_value=1)  # Quart may take the first message
        self._open = False

    async def receive(self) -> dict[str, Any]:
        if not self._open:
            await self._credit.acquire()
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.open()
        return message

    def grant(self) -> None:
        """The handler took what came: let the next message in."""
        if self._credit.value == 0:
            self._credit.release()

    def open(self) -> None:
        """No more pacing for this request."""
        self._open = True
        self.grant()


def pace_bodies(asgi_app: Any, paths: Collection[str]) -> Any:
    """`asgi_app` with the bodies of `POST` requests to `paths` paced (module docstring)."""

    async def app(scope: dict[str, Any], receive: Receive, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in paths:
            paced = PacedBody(receive)
            await asgi_app({**scope, PACED_BODY: paced}, paced.receive, send)
        else:
            await asgi_app(scope, receive, send)

    return app
