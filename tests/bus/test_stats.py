"""Bus statistics: counts, the rate window, the bounds, on a clock the tests move by hand."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.bus.stats import OTHER_FAMILY, BusStats


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(**options) -> tuple[BusStats, Clock]:
    clock = Clock()
    return BusStats(clock=clock, wall_clock=lambda: 1.7e9, **options), clock


def test_publish_deliver_and_drop_are_counted_per_topic_connection_and_family():
    stats, _ = make()
    stats.connected(1, "unix")
    stats.connected(2, "tcp", "127.0.0.1:5000")
    stats.established(1, node="sensor-1", principal="line3", role="operator")
    stats.published(1, "plant.line3.temp", 4, deliveries=2)
    stats.published(1, "plant.line3.temp", 6, deliveries=0)
    stats.published(None, "alarms.fire", 1, deliveries=1)  # from the HTTP API
    stats.delivered(2, 4)
    stats.dropped(2, "plant.line3.temp")

    temp = stats.topic("plant.line3.temp")
    assert (temp.messages, temp.bytes, temp.deliveries, temp.dropped) == (2, 10, 2, 1)
    sensor, other = stats.connections[1], stats.connections[2]
    assert (sensor.node, sensor.principal, sensor.role) == ("sensor-1", "line3", "operator")
    assert (sensor.messages_in, sensor.bytes_in, sensor.messages_out) == (2, 10, 0)
    assert (other.messages_out, other.bytes_out, other.dropped) == (1, 4, 1)
    assert other.public() == {
        "transport": "tcp",
        "remote": "127.0.0.1:5000",
        "connected_since": 1.7e9,
        "messages_in": 0,
        "bytes_in": 0,
        "messages_out": 1,
        "bytes_out": 4,
        "dropped": 1,
    }
    families = {name: vars_of(c) for name, c in stats.family_counters()}
    assert families == {"plant": (2, 10, 2, 1), "alarms": (1, 1, 1, 0)}
    assert vars_of(stats.totals) == (3, 11, 3, 1)


def vars_of(counters) -> tuple[int, int, int, int]:
    return counters.messages, counters.bytes, counters.deliveries, counters.dropped


def test_a_connection_is_forgotten_when_it_ends_and_the_totals_stay():
    stats, _ = make()
    stats.connected(1, "unix")
    stats.published(1, "a", 3, deliveries=0)
    assert stats.disconnected(1).messages_in == 1
    assert stats.connections == {} and stats.disconnected(1) is None
    stats.published(1, "a", 3, deliveries=0)  # a late count for a gone connection: no error
    stats.delivered(1, 3)
    stats.dropped(1, "a")
    assert (stats.totals.messages, stats.connections_total) == (2, 1)


def test_rate_is_messages_of_the_last_window_over_the_window():
    stats, clock = make(window_s=10)
    for _ in range(30):
        stats.published(None, "t", 0, deliveries=0)
    topic = stats.topic("t")
    assert topic.rate(clock.now) == 3.0
    clock.now += 5
    for _ in range(20):
        stats.published(None, "t", 0, deliveries=0)
    assert topic.rate(clock.now) == 5.0  # 30 + 20 within the last 10 s
    clock.now += 5  # the first 30 are 10 s old now: out of the window
    assert topic.rate(clock.now) == 2.0
    clock.now += 5
    assert topic.rate(clock.now) == 0.0
    clock.now += 100  # idle far longer than the window, then busy again
    stats.published(None, "t", 0, deliveries=0)
    assert topic.rate(clock.now) == 0.1
    assert topic.messages == 51


@given(st.lists(st.tuples(st.integers(0, 25), st.integers(1, 5)), max_size=40))
def test_rate_matches_a_count_of_the_recent_publishes(steps):
    """Whatever the pattern of publishes, the rate is exactly the count of publishes in the
    last window (by whole seconds) divided by the window."""
    stats, clock = make(window_s=10)
    times: list[int] = []
    for advance, count in steps:
        clock.now += advance
        for _ in range(count):
            stats.published(None, "t", 0, deliveries=0)
            times.append(int(clock.now))
        now = int(clock.now)
        expected = sum(1 for t in times if now - 10 < t <= now) / 10
        assert stats.topic("t").rate(clock.now) == expected


def test_topics_are_bounded_least_recently_published_evicted_first():
    stats, _ = make(max_topics=3)
    for name in ("a", "b", "c"):
        stats.published(None, name, 1, deliveries=0)
    stats.published(None, "a", 1, deliveries=0)  # a is recent again: b is the oldest
    stats.topic("b")  # reading is not use
    stats.published(None, "d", 1, deliveries=0)
    assert [t.topic for t in stats.topics()] == ["c", "a", "d"]
    assert (len(stats), stats.evicted_topics) == (3, 1)
    stats.published(None, "b", 1, deliveries=0)  # back, from zero
    assert stats.topic("b").messages == 1 and stats.topic("c") is None
    assert stats.totals.messages == 6  # the totals forget nothing


def test_topics_filter_by_prefix():
    stats, _ = make()
    for name in ("plant.a", "plant.b", "plantx", "alarms.a"):
        stats.published(None, name, 0, deliveries=0)
    assert [t.topic for t in stats.topics("plant.")] == ["plant.a", "plant.b"]
    assert [t.topic for t in stats.topics("plant")] == ["plant.a", "plant.b", "plantx"]


def test_families_are_bounded_and_never_reassigned():
    stats, _ = make(max_families=2, max_topics=2)
    for name in ("a.x", "b.x", "c.x", "d.y", "a.z"):
        stats.published(None, name, 1, deliveries=1)
    stats.dropped(5, "e.q")  # a topic never published (a retained value): still a family
    families = {name: vars_of(c) for name, c in stats.family_counters()}
    assert families == {"a": (2, 2, 2, 0), "b": (1, 1, 1, 0), OTHER_FAMILY: (2, 2, 2, 1)}
    # c.x was evicted (max_topics=2); coming back it still counts as _other, not a new family
    stats.published(None, "c.x", 1, deliveries=0)
    assert dict(stats.family_counters())[OTHER_FAMILY].messages == 3
    assert set(stats.families) == {"a", "b"}


def test_no_other_family_until_something_falls_in_it():
    stats, _ = make(max_families=1)
    stats.published(None, "a.b", 1, deliveries=0)
    assert [name for name, _ in stats.family_counters()] == ["a"]


def test_bad_options_and_transports_are_refused():
    clock = Clock()
    with pytest.raises(ValueError):
        BusStats(clock=clock, max_topics=0)
    with pytest.raises(ValueError):
        BusStats(clock=clock, window_s=0)
    stats = BusStats(clock=clock)
    with pytest.raises(ValueError, match="transport"):
        stats.connected(1, "udp")
    assert stats.connections == {}
