"""When and how often the bus client dials again: the reconnect policy, without I/O.

    policy = ReconnectPolicy(first=0.2, max=10.0, max_attempts=None)
    async with open_client(target, token, name="sensor-1", reconnect=policy) as bus: ...

**Which ends are retried.** A connection that ended for a reason that says "try again
later" is dialed again: the endpoint went away or restarted (`going_away`, also what a
broken socket or a hang-up is reported as), a frame cut short (`truncated`), liveness
(`ping_timeout`), a consumer cut off while it was busy (`slow_consumer`), a hello too slow
(`hello_timeout`), line noise (`bad_crc`) and the endpoint's own failure
(`internal_error`). Every other reason is final: the endpoint refused this client or what
it sent (`unauthenticated`, `forbidden`, `no_common_version`, `name_taken`, `replaced`,
`bad_message`, `limit_exceeded`, ...), and a new connection saying the same would be
refused the same way; `normal` is a close somebody meant. `retryable(reason)` decides.

**Backoff.** Before attempt k (0-based) after a drop the client waits
`min(max, first * multiplier**k)` scaled by a random factor in `[1 - jitter, 1]` (so
clients dropped together do not dial together); the sequence restarts after every
successful reconnection. `max_attempts` bounds the attempts after one drop (None: no
bound); when they are used up, the client is over.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

RETRY_REASONS = frozenset(
    {
        "going_away",
        "truncated",
        "ping_timeout",
        "slow_consumer",
        "hello_timeout",
        "bad_crc",
        "internal_error",
    }
)


def retryable(reason: str) -> bool:
    """Whether a connection that ended with close reason `reason` should be dialed again."""
    return reason in RETRY_REASONS


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a client reconnects; `wait` is how long a publish, request or query made while
    disconnected waits for the reconnection before it raises `ConnectionClosed`."""

    first: float = 0.2  # seconds before the first attempt after a drop
    max: float = 10.0  # the longest wait between attempts
    multiplier: float = 2.0
    jitter: float = 0.5  # each wait is scaled by a random factor in [1 - jitter, 1]
    max_attempts: int | None = None  # attempts after one drop; None: until it works
    wait: float = 10.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.max:
            raise ValueError(f"0 < first <= max, not first={self.first}, max={self.max}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier >= 1, not {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"0 <= jitter < 1, not {self.jitter}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts >= 1 or None, not {self.max_attempts}")
        if self.wait < 0:
            raise ValueError(f"wait >= 0, not {self.wait}")

    def delays(self) -> Iterator[float]:
        """The wait before each attempt after a drop: `max_attempts` of them, or forever."""
        delay, attempt = self.first, 0
        while self.max_attempts is None or attempt < self.max_attempts:
            yield delay * self.rng.uniform(1 - self.jitter, 1)
            delay, attempt = min(self.max, delay * self.multiplier), attempt + 1
