"""What went through the bus, sans-IO: counters per topic, per connection and per topic family.

    stats = BusStats(clock=trio.current_time)
    stats.connected(7, "unix")                       # a connection was accepted
    stats.established(7, node="sensor-1", principal="line3", role="operator")
    stats.published(7, "plant.line3.temp", 4, deliveries=2)
    stats.delivered(9, 4)                            # a delivery was queued for connection 9
    stats.dropped(9, "plant.line3.temp")             # ... or lost to its slow-consumer policy
    stats.topic("plant.line3.temp").rate(clock())    # messages/s over the last 10 s

The endpoint calls these on its hot path, so each is a few dictionary lookups and integer
additions; nothing here allocates per message beyond a topic's first sight.

**Counting.** A publish counts for its topic (messages, payload bytes, the deliveries the
router made of it), for its family and for the connection that sent it (`messages_in`,
`bytes_in`; a publish from the HTTP API has no connection). A delivery counts for the
connection it is queued for (`messages_out`, `bytes_out`) when its subscription queue
took it; one the queue refused (`drop`), or that a newer value replaced before it was
written (`latest`), counts as `dropped` for the connection and the topic: exactly the
messages a `gap` marker reports. Bytes are payload bytes, not frame bytes.

**Rates.** Each topic keeps a ring of `window_s` one-second buckets (by `clock`, in
seconds); `rate(now)` is the messages of the last `window_s` seconds, the current one
included, divided by `window_s`.

**Bounds.** Topics: at most `max_topics` (10,000) are tracked; beyond that the least
recently *published* topic is forgotten (`evicted_topics` counts them), so a client
spraying random topics costs bounded memory and pushes out only idle topics. A forgotten
topic that is published again starts from zero. Connections are forgotten when they end
(`disconnected`); the totals are kept. Families (a topic's first token: `plant` for
`plant.line3.temp`) are for metrics, where every label value is a time series: the first
`max_families` (100) first tokens seen get a family of their own, every later one counts
in `OTHER_FAMILY`. The assignment never changes, so family counters only go up.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

DEFAULT_MAX_TOPICS = 10_000
DEFAULT_MAX_FAMILIES = 100
DEFAULT_WINDOW_S = 10
OTHER_FAMILY = "_other"
TRANSPORTS = ("unix", "tcp")


class Counters:
    """Monotonic counts of one family, or of the whole bus."""

    __slots__ = ("bytes", "deliveries", "dropped", "messages")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.deliveries = 0
        self.dropped = 0


class TopicStats:
    """One topic: counts since it was first seen (or last evicted) and its recent rate."""

    __slots__ = (
        "_buckets",
        "_second",
        "bytes",
        "deliveries",
        "dropped",
        "family",
        "messages",
        "topic",
    )

    def __init__(self, topic: str, family: Counters, window_s: int) -> None:
        self.topic = topic
        self.family = family
        self.messages = 0
        self.bytes = 0
        self.deliveries = 0
        self.dropped = 0
        self._buckets = [0] * window_s
        self._second = 0  # the second the newest bucket holds

    def _count(self, second: int) -> None:
        buckets = self._buckets
        window = len(buckets)
        if second != self._second:
            if second - self._second >= window or second < self._second:
                buckets[:] = [0] * window  # (a clock going back restarts the window)
            else:
                for passed in range(self._second + 1, second + 1):
                    buckets[passed % window] = 0
            self._second = second
        buckets[second % window] += 1

    def rate(self, now: float) -> float:
        """Messages per second over the last `window_s` seconds (the current one included)."""
        buckets = self._buckets
        window = len(buckets)
        second = int(now)
        first = max(second - window + 1, self._second - window + 1)
        count = sum(buckets[s % window] for s in range(first, min(second, self._second) + 1))
        return count / window


class ConnectionStats:
    """One connection: who it is and what it moved. `since` is wall-clock seconds."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "dropped",
        "id",
        "messages_in",
        "messages_out",
        "node",
        "principal",
        "remote",
        "role",
        "since",
        "transport",
    )

    def __init__(self, connection_id: int, transport: str, remote: str, since: float) -> None:
        self.id = connection_id
        self.transport = transport
        self.remote = remote
        self.since = since
        self.node: str | None = None
        self.principal: str | None = None
        self.role: str | None = None
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.dropped = 0

    def public(self) -> dict[str, object]:
        return {
            "transport": self.transport,
            "remote": self.remote,
            "connected_since": self.since,
            "messages_in": self.messages_in,
            "bytes_in": self.bytes_in,
            "messages_out": self.messages_out,
            "bytes_out": self.bytes_out,
            "dropped": self.dropped,
        }


class BusStats:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
        max_topics: int = DEFAULT_MAX_TOPICS,
        max_families: int = DEFAULT_MAX_FAMILIES,
        window_s: int = DEFAULT_WINDOW_S,
    ) -> None:
        if max_topics < 1 or max_families < 0 or window_s < 1:
            raise ValueError("max_topics and window_s must be positive, max_families >= 0")
        self.clock = clock
        self.wall_clock = wall_clock
        self.max_topics = max_topics
        self.max_families = max_families
        self.window_s = window_s
        self._topics: OrderedDict[str, TopicStats] = OrderedDict()  # least recent first
        self.connections: dict[int, ConnectionStats] = {}
        self.families: dict[str, Counters] = {}
        self._other = Counters()
        self.totals = Counters()
        self.evicted_topics = 0
        self.connections_total = 0

    # --- connections -------------------------------------------------------------------------

    def connected(self, connection_id: int, transport: str, remote: str = "") -> ConnectionStats:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r} is not one of {TRANSPORTS}")
        stats = ConnectionStats(connection_id, transport, remote, self.wall_clock())
        self.connections[connection_id] = stats
        self.connections_total += 1
        return stats

    def established(
        self, connection_id: int, *, node: str | None, principal: str | None, role: str | None
    ) -> None:
        stats = self.connections.get(connection_id)
        if stats is not None:
            stats.node, stats.principal, stats.role = node, principal, role

    def disconnected(self, connection_id: int) -> ConnectionStats | None:
        return self.connections.pop(connection_id, None)

    # --- traffic -----------------------------------------------------------------------------

    def published(
        self, connection_id: int | None, topic: str, size: int, *, deliveries: int
    ) -> None:
        """A publish of `size` payload bytes to `topic`, routed to `deliveries` subscriptions."""
        topics = self._topics
        stats = topics.get(topic)
        if stats is None:
            stats = topics[topic] = TopicStats(topic, self._family(topic), self.window_s)
            if len(topics) > self.max_topics:
                topics.popitem(last=False)
                self.evicted_topics += 1
        else:
            topics.move_to_end(topic)
        stats.messages += 1
        stats.bytes += size
        stats.deliveries += deliveries
        stats._count(int(self.clock()))
        family = stats.family
        family.messages += 1
        family.bytes += size
        family.deliveries += deliveries
        totals = self.totals
        totals.messages += 1
        totals.bytes += size
        totals.deliveries += deliveries
        if connection_id is not None:
            conn = self.connections.get(connection_id)
            if conn is not None:
                conn.messages_in += 1
                conn.bytes_in += size

    def delivered(self, connection_id: int, size: int) -> None:
        """A delivery of `size` payload bytes was queued for the connection."""
        conn = self.connections.get(connection_id)
        if conn is not None:
            conn.messages_out += 1
            conn.bytes_out += size

    def dropped(self, connection_id: int, topic: str) -> None:
        """A delivery to the connection was lost to its subscription's slow-consumer policy."""
        conn = self.connections.get(connection_id)
        if conn is not None:
            conn.dropped += 1
        stats = self._topics.get(topic)
        family = stats.family if stats is not None else self._family(topic)
        if stats is not None:
            stats.dropped += 1
        family.dropped += 1
        self.totals.dropped += 1

    def _family(self, topic: str) -> Counters:
        root = topic.partition(".")[0]
        family = self.families.get(root)
        if family is None:
            if len(self.families) >= self.max_families:
                return self._other
            family = self.families[root] = Counters()
        return family

    # --- reading -----------------------------------------------------------------------------

    def topic(self, topic: str) -> TopicStats | None:
        """A topic's stats (reading does not count as use)."""
        return self._topics.get(topic)

    def topics(self, prefix: str = "") -> Iterator[TopicStats]:
        """Every tracked topic starting with `prefix`, least recently published first."""
        for name, stats in self._topics.items():
            if name.startswith(prefix):
                yield stats

    def __len__(self) -> int:
        return len(self._topics)

    def family_counters(self) -> Iterator[tuple[str, Counters]]:
        """(family, counters) for every family, then `OTHER_FAMILY` once anything fell in it."""
        yield from self.families.items()
        if self._other.messages or self._other.dropped:
            yield OTHER_FAMILY, self._other
