"""Waiting for a version on trial to prove itself: every `/health` component `ok`, without
a break, for `healthy_s`, within `timeout_s` of the start of the wait.

`until_healthy(snapshot, healthy_s=..., timeout_s=...)` polls `snapshot()` (the runtime's
`Health.snapshot`, whose `status` is `ok` only once the process is ready and every
component is ok) a few times per `healthy_s` (at most once a second, at least every 50 ms)
and returns True once the run of good answers is long enough, False at the timeout. Time is
trio's clock, so the tests run it on a virtual one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

__all__ = ["until_healthy"]


async def until_healthy(
    snapshot: Callable[[], dict[str, Any]], *, healthy_s: float, timeout_s: float
) -> bool:
    poll = min(1.0, max(healthy_s / 10, 0.05))
    healthy_since: float | None = None
    with trio.move_on_after(timeout_s):
        while True:
            now = trio.current_time()
            if snapshot()["status"] != "ok":
                healthy_since = None
            elif healthy_since is None:
                healthy_since = now
            if healthy_since is not None and now - healthy_since >= healthy_s:
                return True
            await trio.sleep(poll)
    return False
