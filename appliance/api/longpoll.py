"""Long polls: `?wait=S` holds a read until what it watches changes, S seconds pass or the
appliance begins to stop, whichever comes first, so a client learns of a change without
polling and a stop never waits on a parked client."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping

import trio

from appliance.api.problems import Problem

MAX_WAIT_S = 60.0


def wait_seconds(args: Mapping[str, str]) -> float:
    """The `wait` query parameter in seconds (0 when absent); a problem when it is not a
    number in [0, MAX_WAIT_S]."""
    raw = args.get("wait")
    if raw is None:
        return 0.0
    try:
        value = float(raw) if len(raw) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value <= MAX_WAIT_S):
        message = f"expected seconds, 0-{MAX_WAIT_S:g}"
        raise Problem(
            422,
            "validation_failed",
            f"wait must be a number of seconds, 0-{MAX_WAIT_S:g}",
            errors=[{"field": "wait", "message": message}],
        )
    return value


async def hold(
    changed: Callable[[], Awaitable[object]], seconds: float, stopping: trio.Event
) -> None:
    """Wait for `changed()` to return, at most `seconds`, and not past `stopping`."""
    if seconds <= 0 or stopping.is_set():
        return
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:

            async def first(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, changed)
            nursery.start_soon(first, stopping.wait)
