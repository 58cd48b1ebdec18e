"""Topics and patterns: validation, matching against a brute-force reference, the
pattern-covers-pattern rule, the subscription trie with queue groups, and permissions."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.bus.topics import (
    MAX_TOKEN_LENGTH,
    MAX_TOKENS,
    MAX_TOPIC_LENGTH,
    Pattern,
    Permissions,
    SubscriptionIndex,
    TopicError,
    parse_pattern,
    pattern_covers,
    split_topic,
    validate_topic,
)

# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "a",
        "sensors.line-1.temp",
        "Sensors.A_b.c-D",
        "dev.00:1a:2b:3c:4d:5e.rssi",
        "_inbox.42",
        ".".join(["t"] * MAX_TOKENS),
        "x" * MAX_TOKEN_LENGTH,
    ],
)
def test_valid_topics(topic):
    assert validate_topic(topic) == topic
    assert split_topic(topic) == tuple(topic.split("."))


@pytest.mark.parametrize(
    ("topic", "index", "fragment"),
    [
        ("", None, "at least one token"),
        (".a", 0, "empty"),
        ("a.", 1, "empty"),
        ("a..b", 1, "empty"),
        ("a.*", 1, "no wildcards"),
        ("a.>", 1, "no wildcards"),
        ("a.b c", 1, "A-Z a-z 0-9"),
        ("a.é", 1, "A-Z a-z 0-9"),
        ("a/b", 0, "A-Z a-z 0-9"),
        ("a.sens*", 1, "whole token"),
        ("x" * (MAX_TOKEN_LENGTH + 1), 0, "A-Z a-z 0-9"),
        (".".join(["t"] * (MAX_TOKENS + 1)), None, "at most 16 tokens"),
        ("a." + "b" * MAX_TOPIC_LENGTH, None, "at most 255 characters"),
    ],
)
def test_invalid_topics_name_the_token(topic, index, fragment):
    with pytest.raises(TopicError) as caught:
        split_topic(topic)
    assert caught.value.code == "invalid_topic"
    assert caught.value.token_index == index
    assert fragment in caught.value.message


def test_topic_must_be_a_string():
    with pytest.raises(TopicError, match="string") as caught:
        split_topic(b"a.b")  # type: ignore[arg-type]
    assert caught.value.code == "invalid_topic"


@pytest.mark.parametrize("text", ["*", ">", "a.*", "a.>", "*.*.>", "a.*.c", "a.b", "*.b.>"])
def test_valid_patterns(text):
    pattern = parse_pattern(text)
    assert str(pattern) == text
    assert pattern.tokens == tuple(text.split("."))
    assert pattern.is_literal == ("*" not in text and ">" not in text)


@pytest.mark.parametrize(
    ("text", "index", "fragment"),
    [
        ("", None, "at least one token"),
        (">.a", 0, "only as the last token"),
        ("a.>.>", 1, "only as the last token"),
        ("a.**", 1, "whole token"),
        ("a.b*", 1, "whole token"),
        ("a.>b", 1, "whole token"),
        ("a..*", 1, "empty"),
        ("a.*.", 2, "empty"),
        ("a.#", 1, "A-Z a-z 0-9"),
        (".".join(["*"] * (MAX_TOKENS + 1)), None, "at most 16 tokens"),
    ],
)
def test_invalid_patterns_name_the_token(text, index, fragment):
    with pytest.raises(TopicError) as caught:
        parse_pattern(text)
    assert caught.value.code == "invalid_pattern"
    assert caught.value.token_index == index
    assert fragment in caught.value.message


# --- matching -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.c", False),
        ("a.b", "a.b.c", False),
        ("a.*", "a.b", True),
        ("a.*", "a", False),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b", True),
        ("a.>", "a.b.c.d", True),
        ("a.>", "a", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("*", "a", True),
        ("*", "a.b", False),
        ("*.b.>", "x.b.c", True),
        ("*.b.>", "x.c.c", False),
        ("sensors.*.temp", "sensors.line1.temp", True),
        ("sensors.*.temp", "sensors.line1.hum", False),
        ("A.b", "a.b", False),
    ],
)
def test_match_examples(pattern, topic, expected):
    assert parse_pattern(pattern).matches(topic) is expected


def reference_match(pattern: list[str], topic: list[str]) -> bool:
    """Recursive reference: `*` eats one token, `>` eats one or more."""
    if not pattern:
        return not topic
    head, rest = pattern[0], pattern[1:]
    if head == ">":
        return len(topic) >= 1
    if not topic:
        return False
    return (head == "*" or head == topic[0]) and reference_match(rest, topic[1:])


LITERALS = ["a", "b", "c"]
pattern_tokens = st.lists(st.sampled_from(["a", "b", "*"]), min_size=0, max_size=4)
patterns = st.builds(
    lambda body, tail: ".".join(body + ([">"] if tail else [])) or ">",
    pattern_tokens,
    st.booleans(),
).map(parse_pattern)
topics = st.lists(st.sampled_from(LITERALS), min_size=1, max_size=6).map(".".join)


@given(patterns, topics)
def test_match_agrees_with_reference(pattern, topic):
    assert pattern.matches(topic) == reference_match(list(pattern.tokens), topic.split("."))


# --- pattern covers pattern -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "requested", "expected"),
    [
        (["sensors.>"], "sensors.*.temp", True),
        (["sensors.>"], "sensors.>", True),
        (["sensors.>"], "sensors.a", True),
        (["sensors.>"], "sensors", False),
        (["sensors.*"], "sensors.>", False),  # sensors.> also matches sensors.a.b
        (["sensors.*"], "sensors.*", True),
        (["sensors.*"], "sensors.a", True),
        (["sensors.*"], "sensors.*.temp", False),
        (["sensors.a"], "sensors.*", False),  # tokens are an open set
        (["sensors.a", "sensors.b"], "sensors.*", False),
        (["*.temp"], "sensors.*", False),
        (["*.*"], "sensors.*", True),
        ([">"], "*.b.>", True),
        (["*.>"], ">", False),  # > also matches single tokens
        (["*", "*.>"], ">", True),  # the union covers it
        (["a.*", "a.*.>"], "a.>", True),
        (["a.*", "a.*.*"], "a.>", False),  # a.x.y.z is left out
        (["a.*.>"], "a.>", False),
        (["a.b.>", "a.*"], "a.>", False),  # a.c.d is left out
        ([], "a", False),
        ([], ">", False),
    ],
)
def test_covers_examples(allowed, requested, expected):
    assert pattern_covers([parse_pattern(p) for p in allowed], parse_pattern(requested)) is expected


def test_covers_is_exact_up_to_the_token_limit():
    # Every length from 2 to MAX_TOKENS spelled out covers `a.>` for valid topics.
    allowed = [parse_pattern(".".join(["a"] + ["*"] * k)) for k in range(1, MAX_TOKENS)]
    assert pattern_covers(allowed, parse_pattern("a.>"))
    assert not pattern_covers(allowed[:-1], parse_pattern("a.>"))


def test_single_pattern_covers_method():
    assert parse_pattern("sensors.>").covers(parse_pattern("sensors.*.temp"))
    assert not parse_pattern("sensors.*").covers(parse_pattern("sensors.>"))


def brute_covers(allowed: list[Pattern], requested: Pattern) -> bool:
    """Enumerate every topic over the named literals plus one fresh token, up to a length
    past every pattern: a token no pattern names behaves like any other unnamed one."""
    alphabet = [*LITERALS, "fresh"]
    longest = max([len(p.tokens) for p in allowed] + [len(requested.tokens)]) + 1
    for length in range(1, longest + 1):
        for topic in itertools.product(alphabet, repeat=length):
            if requested.matches(topic) and not any(p.matches(topic) for p in allowed):
                return False
    return True


@settings(max_examples=400, deadline=None)
@given(st.lists(patterns, max_size=3), patterns)
def test_covers_agrees_with_enumeration(allowed, requested):
    assert pattern_covers(allowed, requested) == brute_covers(allowed, requested)


@given(patterns)
def test_covers_is_reflexive_and_catch_all_covers_everything(pattern):
    assert pattern.covers(pattern)
    assert parse_pattern(">").covers(pattern)


@given(patterns, patterns, patterns)
def test_covers_is_transitive(a, b, c):
    if a.covers(b) and b.covers(c):
        assert a.covers(c)


# --- permissions ----------------------------------------------------------------------------


def test_permissions():
    perms = Permissions.from_texts(
        publish=["sensors.line1.>", "_inbox.*"], subscribe=["sensors.>", "results.*"]
    )
    assert perms.may_publish("sensors.line1.temp")
    assert perms.may_publish(("_inbox", "7"))
    assert not perms.may_publish("sensors.line2.temp")
    assert not perms.may_publish("sensors.line1")
    assert perms.may_subscribe(parse_pattern("sensors.*.temp"))
    assert perms.may_subscribe(parse_pattern("results.x"))
    assert not perms.may_subscribe(parse_pattern("results.>"))
    assert not perms.may_subscribe(parse_pattern(">"))
    everything = Permissions.allow_all()
    assert everything.may_publish("a.b.c") and everything.may_subscribe(parse_pattern(">"))
    nothing = Permissions()
    assert not nothing.may_publish("a") and not nothing.may_subscribe(parse_pattern("a"))


def test_permissions_refuse_bad_patterns_and_topics():
    with pytest.raises(TopicError) as caught:
        Permissions.from_texts(publish=["a.>.b"], subscribe=[])
    assert caught.value.code == "invalid_pattern"
    with pytest.raises(TopicError) as caught:
        Permissions.allow_all().may_publish("a..b")
    assert caught.value.code == "invalid_topic"


# --- the subscription index -----------------------------------------------------------------


def keys(subs):
    return sorted((s.connection, s.sid) for s in subs)


def test_index_plain_subscriptions():
    index = SubscriptionIndex()
    index.add("c1", 1, "sensors.*.temp")
    index.add("c1", 2, "sensors.>")
    index.add("c2", 1, "sensors.line1.temp")
    index.add("c3", 1, ">")
    index.add("c3", 2, "other.>")
    assert len(index) == 5
    assert keys(index.match("sensors.line1.temp")) == [("c1", 1), ("c1", 2), ("c2", 1), ("c3", 1)]
    assert keys(index.match("sensors.line2.temp")) == [("c1", 1), ("c1", 2), ("c3", 1)]
    assert keys(index.match("sensors")) == [("c3", 1)]
    assert index.has_subscribers("nothing.here")  # ">" catches everything
    index.remove("c3", 1)
    assert not index.has_subscribers("nothing.here")
    assert index.match("nothing.here") == []


def test_index_add_errors():
    index = SubscriptionIndex(max_per_connection=2)
    index.add("c", 1, "a")
    with pytest.raises(TopicError) as caught:
        index.add("c", 1, "b")
    assert caught.value.code == "duplicate_subscription"
    with pytest.raises(TopicError) as caught:
        index.add("c", 2, "a.>.b")
    assert caught.value.code == "invalid_pattern"
    for bad in ("", "a b", "x" * 65):
        with pytest.raises(TopicError) as caught:
            index.add("c", 2, "a", group=bad)
        assert caught.value.code == "invalid_group"
    index.add("c", 2, "b")
    with pytest.raises(TopicError) as caught:
        index.add("c", 3, "c")
    assert caught.value.code == "too_many_subscriptions"
    index.add("other", 1, "c")  # the bound is per connection
    with pytest.raises(TopicError) as caught:
        index.match("a.*")
    assert caught.value.code == "invalid_topic"
    assert len(index) == 3


def test_index_remove_prunes_the_trie():
    index = SubscriptionIndex()
    assert index.remove("c", 1) is None
    sub = index.add("c", 1, "a.b.c.d")
    index.add("c", 2, "a.b")
    assert index.remove("c", 1) == sub
    assert index.remove("c", 1) is None
    assert index._root.children["a"].children["b"].children == {}
    index.remove("c", 2)
    assert index._root.empty()
    assert len(index) == 0 and index.of_connection("c") == []


def test_remove_connection():
    index = SubscriptionIndex()
    index.add("c1", 1, "a.>")
    index.add("c1", 2, "a.*", group="g")
    index.add("c2", 1, "a.*", group="g")
    removed = index.remove_connection("c1")
    assert keys(removed) == [("c1", 1), ("c1", 2)]
    assert index.remove_connection("c1") == []
    assert keys(index.match("a.x")) == [("c2", 1)]
    assert index.get("c2", 1).group == "g" and index.get("c1", 1) is None


def test_queue_group_round_robin():
    index = SubscriptionIndex()
    for worker in ("w1", "w2", "w3"):
        index.add(worker, 1, "jobs.*", group="workers")
    index.add("auditor", 1, "jobs.>")
    chosen = []
    for _ in range(6):
        deliveries = index.match("jobs.x")
        assert ("auditor", 1) in keys(deliveries)
        members = [s.connection for s in deliveries if s.group == "workers"]
        assert len(members) == 1
        chosen.append(members[0])
    assert chosen == ["w1", "w2", "w3", "w1", "w2", "w3"]
    index.remove("w2", 1)
    after = [[s.connection for s in index.match("jobs.y") if s.group] for _ in range(4)]
    assert sorted(after[:2]) == [["w1"], ["w3"]] and after[2:] == after[:2]  # alternate


def test_queue_group_identity_is_pattern_and_name():
    index = SubscriptionIndex(chooser=lambda n: n - 1)  # always the newest member
    index.add("w1", 1, "jobs.*", group="g")
    index.add("w2", 1, "jobs.*", group="g")
    index.add("w3", 1, "jobs.>", group="g")  # same name, other pattern: another group
    index.add("w4", 1, "jobs.*", group="h")
    assert keys(index.match("jobs.x")) == [("w2", 1), ("w3", 1), ("w4", 1)]
    assert keys(index.match("jobs.x.y")) == [("w3", 1)]


def test_injected_chooser_random_is_reproducible():
    def run(seed):
        index = SubscriptionIndex(chooser=random.Random(seed).randrange)
        for worker in range(5):
            index.add(worker, 0, "q", group="g")
        return [index.match("q")[0].connection for _ in range(20)]

    assert run(7) == run(7)
    assert set(run(7)) <= set(range(5))


def test_bad_chooser_is_caught():
    index = SubscriptionIndex(chooser=lambda n: n)
    index.add("w", 1, "q", group="g")
    with pytest.raises(ValueError, match="chooser"):
        index.match("q")


def test_has_subscribers_does_not_advance_round_robin():
    index = SubscriptionIndex()
    index.add("w1", 1, "q", group="g")
    index.add("w2", 1, "q", group="g")
    assert index.has_subscribers("q")
    assert index.match("q")[0].connection == "w1"
    assert index.has_subscribers(("q",))
    assert index.match("q")[0].connection == "w2"


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove"]),
        st.sampled_from(["c1", "c2", "c3"]),
        st.integers(0, 3),
        patterns,
        st.sampled_from([None, None, "g", "h"]),
    ),
    max_size=30,
)


@given(ops, st.lists(topics, min_size=1, max_size=5))
def test_index_agrees_with_linear_scan(operations, probe_topics):
    index = SubscriptionIndex(chooser=lambda n: 0)
    live: dict = {}
    for op, conn, sid, pattern, group in operations:
        if op == "add" and (conn, sid) not in live:
            index.add(conn, sid, pattern, group)
            live[(conn, sid)] = (pattern, group)
        elif op == "remove":
            removed = index.remove(conn, sid)
            assert (removed is not None) == ((conn, sid) in live)
            live.pop((conn, sid), None)
    assert len(index) == len(live)
    for topic in probe_topics:
        matching = {k: v for k, v in live.items() if v[0].matches(topic)}
        plain = {k for k, (_, group) in matching.items() if group is None}
        groups = {(p.text, g) for p, g in matching.values() if g is not None}
        got = index.match(topic)
        assert len(got) == len({(s.connection, s.sid) for s in got})
        assert {s.key for s in got if s.group is None} == plain
        got_groups = [(s.pattern.text, s.group) for s in got if s.group is not None]
        assert sorted(got_groups) == sorted(groups)  # exactly one member per group
        assert all(s.key in matching for s in got)
        assert index.has_subscribers(topic) == bool(matching)
    for conn in ("c1", "c2", "c3"):
        index.remove_connection(conn)
    assert len(index) == 0 and index._root.empty()
