"""Per-principal token buckets: `rate` tokens a second, at most `burst` saved up."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """In memory, bounded: the least recently seen principals are forgotten first (which
    only ever gives them a full bucket back, never less than their due)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_principals: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max = max_principals
        self._clock = clock
        self.configure(rate, burst)

    def configure(self, rate: float, burst: int) -> None:
        """Change the limits (SIGHUP); existing buckets keep their level, capped by burst."""
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst

    def acquire(self, principal: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        level, last = self._buckets.pop(principal, (float(self.burst), now))
        level = min(float(self.burst), level + (now - last) * self.rate)
        if level >= 1.0:
            self._remember(principal, level - 1.0, now)
            return 0.0
        self._remember(principal, level, now)
        return (1.0 - level) / self.rate

    def _remember(self, principal: str, level: float, now: float) -> None:
        self._buckets[principal] = (level, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)


def retry_after_header(wait_s: float) -> str:
    return str(max(1, math.ceil(wait_s)))
