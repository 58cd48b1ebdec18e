"""Resolution: labels, priorities, sticky percentage buckets, and the explanation."""

from __future__ import annotations

from appliance.config.model import Rule
from appliance.config.resolve import BUCKETS, Box, resolve

KEY = "acme/pump/prod/limits"


def test_no_rules_serves_the_latest():
    result = resolve(KEY, [], 4, Box("box", {}))
    assert result.version == 4 and result.rule is None


def test_highest_matching_priority_wins_and_the_rest_say_why():
    rules = [
        Rule(version=3, priority=20, labels={"site": "b"}),
        Rule(version=2, priority=10, labels={"site": "a", "line": "1"}),
        Rule(version=1, priority=0),
    ]
    box = Box("box", {"site": "a", "line": "1", "arch": "x86_64"})
    result = resolve(KEY, rules, 3, box)
    assert (result.version, result.rule) == (2, 1)
    why = [reason["why"] for reason in result.reasons]
    assert "site='b' wanted; this box has site='a'" in why[0]
    assert result.reasons[1]["matched"] and not result.reasons[2]["matched"]
    assert why[2] == "a higher-priority rule matched"
    other = resolve(KEY, rules, 3, Box("box", {"site": "c"}))
    assert other.version == 1
    assert "no line label" in resolve(KEY, rules[1:2], 3, Box("x", {"site": "a"})).reasons[0]["why"]


def test_no_match_has_no_version():
    result = resolve(KEY, [Rule(version=1, priority=0, labels={"site": "a"})], 1, Box("b", {}))
    assert result.version is None and result.rule is None


def test_buckets_are_stable_spread_and_per_key():
    boxes = [Box(f"box-{i}") for i in range(2000)]
    buckets = [box.bucket(KEY) for box in boxes]
    assert buckets == [box.bucket(KEY) for box in boxes]  # stable
    assert all(0 <= b < BUCKETS for b in buckets)
    under_10 = sum(b < BUCKETS // 10 for b in buckets)
    assert 120 < under_10 < 280  # ~200 of 2000 expected
    other_key = [box.bucket("acme/pump/prod/other") for box in boxes]
    assert other_key != buckets


def test_a_growing_canary_keeps_its_boxes():
    boxes = [Box(f"box-{i}") for i in range(500)]

    def on_canary(percent: float) -> set[str]:
        rules = [Rule(version=2, priority=10, percent=percent), Rule(version=1, priority=0)]
        return {b.device_id for b in boxes if resolve(KEY, rules, 2, b).version == 2}

    ten, twenty, hundred = on_canary(10), on_canary(20), on_canary(100)
    assert ten <= twenty <= hundred
    assert len(hundred) == 500 and 0 < len(ten) < len(twenty)
