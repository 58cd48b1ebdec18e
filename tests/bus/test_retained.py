"""Retained last values: bounds, the two overflow policies, and lookup by pattern."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.bus.retained import Overflow, PutResult, Retained, RetainedStore
from appliance.bus.topics import TopicError, parse_pattern


def topics_of(entries):
    return [e.topic for e in entries]


def test_put_get_replace_and_clear():
    store = RetainedStore(max_count=10, max_bytes=1000)
    assert store.put("a.b", b"1") == PutResult(stored=True)
    assert store.get("a.b") == Retained("a.b", b"1")
    assert store.bytes_used == 4
    assert store.put("a.b", b"22", {"unit": "C"}) == PutResult(stored=True)
    assert store.get("a.b").payload == b"22"
    assert store.get("a.b").headers == (("unit", "C"),)
    assert store.bytes_used == 3 + 2 + 5
    assert store.put("a.b", b"") == PutResult(stored=False, removed=True)  # MQTT: clear
    assert store.get("a.b") is None and "a.b" not in store
    assert store.put("a.b", b"") == PutResult(stored=False, removed=False)
    assert len(store) == 0 and store.bytes_used == 0
    assert store._root.children == {}


def test_bad_input():
    store = RetainedStore(max_count=1, max_bytes=10)
    with pytest.raises(TopicError) as caught:
        store.put("a.*", b"x")
    assert caught.value.code == "invalid_topic"
    with pytest.raises(TopicError) as caught:
        store.matching("a.>.b")
    assert caught.value.code == "invalid_pattern"
    with pytest.raises(ValueError):
        RetainedStore(max_count=0, max_bytes=10)


def test_too_large_value_is_refused_and_drops_the_old_value():
    store = RetainedStore(max_count=10, max_bytes=100, max_value_bytes=10)
    store.put("t", b"old")
    result = store.put("t", b"x" * 10)  # 1 + 10 > 10
    assert result == PutResult(stored=False, removed=True, refused="retained_too_large")
    assert store.get("t") is None  # never an older value than the latest
    assert store.put("u", b"x" * 20).refused == "retained_too_large"


def test_refuse_policy_protects_held_topics():
    store = RetainedStore(max_count=2, max_bytes=100)
    store.put("a", b"1")
    store.put("b", b"1")
    assert store.put("c", b"1") == PutResult(stored=False, refused="retained_full")
    assert topics_of(store) == ["a", "b"]
    assert store.put("a", b"2").stored  # updates of held topics still go in
    assert store.get("a").payload == b"2"


def test_refuse_policy_on_bytes_drops_a_refused_update():
    store = RetainedStore(max_count=10, max_bytes=20)
    store.put("a", b"x" * 9)  # 10 bytes
    store.put("b", b"x" * 9)  # 20 bytes: full
    assert store.put("c", b"x").refused == "retained_full"
    assert store.put("a", b"y" * 5).stored  # shrinking fits
    result = store.put("a", b"z" * 15)  # 16 + 10 > 20
    assert result == PutResult(stored=False, removed=True, refused="retained_full")
    assert store.get("a") is None and store.bytes_used == 10


def test_evict_oldest_policy():
    store = RetainedStore(max_count=3, max_bytes=100, overflow=Overflow.EVICT_OLDEST)
    store.put("a", b"1")
    store.put("b", b"1")
    store.put("c", b"1")
    store.put("a", b"2")  # now b is the least recently updated
    store.matching(">")  # reads do not count as use
    store.get("b")
    result = store.put("d", b"1")
    assert result == PutResult(stored=True, evicted=("b",))
    assert topics_of(store) == ["c", "a", "d"]


def test_evict_oldest_on_bytes_evicts_as_many_as_needed():
    store = RetainedStore(max_count=10, max_bytes=30, overflow=Overflow.EVICT_OLDEST)
    for name in "abc":
        store.put(name, b"x" * 9)  # 10 bytes each
    result = store.put("b", b"y" * 25)  # 26 bytes; b's own 10 are freed first
    assert result == PutResult(stored=True, evicted=("a", "c"))
    assert topics_of(store) == ["b"] and store.bytes_used == 26


def test_matching_patterns():
    store = RetainedStore(max_count=100, max_bytes=10_000)
    for topic in ["s.l1.temp", "s.l1.hum", "s.l2.temp", "s.l2.x.temp", "s", "t.l1.temp"]:
        store.put(topic, topic.encode())
    assert topics_of(store.matching("s.*.temp")) == ["s.l1.temp", "s.l2.temp"]
    assert topics_of(store.matching("s.>")) == ["s.l1.hum", "s.l1.temp", "s.l2.temp", "s.l2.x.temp"]
    assert topics_of(store.matching("*")) == ["s"]
    assert topics_of(store.matching("*.l1.*")) == ["s.l1.hum", "s.l1.temp", "t.l1.temp"]
    assert topics_of(store.matching("s.l1.temp")) == ["s.l1.temp"]
    assert store.matching("s.l3.temp") == []
    assert len(store.matching(parse_pattern(">"))) == 6


LITERALS = ["a", "b", "c"]
topic_st = st.lists(st.sampled_from(LITERALS), min_size=1, max_size=4).map(".".join)
pattern_st = st.builds(
    lambda body, tail: ".".join(body + ([">"] if tail else [])) or ">",
    st.lists(st.sampled_from(["a", "b", "*"]), max_size=3),
    st.booleans(),
)
ops_st = st.lists(
    st.tuples(st.sampled_from(["put", "put", "put", "remove"]), topic_st, st.binary(max_size=12)),
    max_size=60,
)


@given(ops_st, st.sampled_from(list(Overflow)), st.lists(pattern_st, max_size=4))
def test_store_invariants(operations, overflow, probes):
    store = RetainedStore(max_count=5, max_bytes=40, max_value_bytes=16, overflow=overflow)
    latest: dict[str, bytes] = {}
    for op, topic, payload in operations:
        if op == "put":
            result = store.put(topic, payload)
            latest[topic] = payload
            assert result.stored == (store.get(topic) is not None)
            for victim in result.evicted:
                assert victim not in store
            if overflow is Overflow.REFUSE:
                assert result.evicted == ()
        else:
            store.remove(topic)
            latest[topic] = b""
        assert len(store) <= store.max_count
        assert store.bytes_used == sum(e.size for e in store) <= store.max_bytes
    for entry in store:
        assert entry.payload == latest[entry.topic]  # the latest value or none at all
    for text in probes:
        pattern = parse_pattern(text)
        expected = sorted(e.topic for e in store if pattern.matches(e.topic))
        assert topics_of(store.matching(pattern)) == expected
    for entry in list(store):
        store.remove(entry.topic)
    assert store.bytes_used == 0 and store._root.children == {}
