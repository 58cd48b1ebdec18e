"""The follower's sans-IO parts: reading the upstream's answers, the retry schedule, and
when a change of state is news. No sockets, no trio."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.config.upstream import (
    RETRY,
    Backoff,
    Compacted,
    Failure,
    Follower,
    Link,
    Page,
    check_page,
    read_log,
    read_snapshot,
)


def body(value) -> bytes:
    return json.dumps(value).encode()


# Reading answers.


def test_a_page_reads_as_a_page():
    entries = [{"revision": 4}, {"revision": 5}]
    page = read_log(200, body({"revision": 9, "compacted_through": 2, "entries": entries}))
    assert page == Page(9, 2, tuple(entries))
    assert page.upstream_revision == 9


def test_a_page_whose_entries_run_past_its_head_reports_the_last_one():
    page = read_log(
        200, body({"revision": 3, "compacted_through": 0, "entries": [{"revision": 4}]})
    )
    assert page.upstream_revision == 4


def test_compacted_reads_as_compacted():
    problem = {"code": "revision_compacted", "compacted_through": 12, "revision": 40}
    assert read_log(410, body(problem)) == Compacted(12, 40)
    assert read_log(410, body({"code": "revision_compacted"})) == Compacted(None, None)


@pytest.mark.parametrize(
    ("status", "answer", "link", "code"),
    [
        (401, {"code": "unauthorized", "detail": "bad token"}, Link.REFUSED, "upstream_refused"),
        (403, {}, Link.REFUSED, "upstream_refused"),
        (500, {}, Link.OFFLINE, "upstream_unavailable"),
        (503, b"<html>gateway</html>", Link.OFFLINE, "upstream_unavailable"),
        (429, {}, Link.OFFLINE, "upstream_unavailable"),
        (404, {}, Link.FAULTY, "upstream_bad_response"),
        (410, {"code": "gone"}, Link.FAULTY, "upstream_bad_response"),
        (200, b"<html>not json</html>", Link.FAULTY, "upstream_bad_response"),
        (200, b"\xff\xfe", Link.FAULTY, "upstream_bad_response"),
        (200, [], Link.FAULTY, "upstream_bad_response"),
        (200, {"revision": "1", "compacted_through": 0, "entries": []}, Link.FAULTY, None),
        (200, {"revision": -1, "compacted_through": 0, "entries": []}, Link.FAULTY, None),
        (200, {"revision": True, "compacted_through": 0, "entries": []}, Link.FAULTY, None),
        (200, {"revision": 1, "compacted_through": 0, "entries": {}}, Link.FAULTY, None),
        (200, {"revision": 1, "entries": []}, Link.FAULTY, None),
    ],
)
def test_other_answers_are_failures(status, answer, link, code):
    raw = answer if isinstance(answer, bytes) else body(answer)
    failure = read_log(status, raw)
    assert isinstance(failure, Failure)
    assert failure.link is link
    assert failure.code == (code or "upstream_bad_response")
    assert failure.message


def test_retry_after_is_read_when_sane():
    assert read_log(429, b"{}", {"retry-after": "7"}).retry_after == 7.0
    for raw in ("soon", "-1", "1e9", "", "9" * 40):
        assert read_log(503, b"{}", {"retry-after": raw}).retry_after is None


def test_a_deeply_nested_answer_is_garbage_not_a_crash():
    assert read_log(200, b"[" * 100_000).code == "upstream_bad_response"


@given(st.binary(max_size=200), st.integers(100, 599))
def test_any_bytes_read_as_an_outcome(raw, status):
    assert isinstance(read_log(status, raw), Page | Compacted | Failure)
    assert isinstance(read_snapshot(status, raw), dict | Failure)


def test_snapshots():
    assert read_snapshot(200, body({"revision": 3, "keys": []})) == {"revision": 3, "keys": []}
    assert read_snapshot(200, body({"keys": []})).code == "upstream_bad_response"
    assert read_snapshot(403, b"").link is Link.REFUSED


def test_page_checks():
    assert check_page(Page(5, 0, ({"revision": 5},)), 4) is None
    assert check_page(Page(4, 0, ()), 4) is None  # a long poll that timed out
    behind = check_page(Page(2, 0, ()), 4)
    assert (behind.code, behind.upstream_revision) == ("upstream_behind", 2)
    assert check_page(Page(6, 0, ()), 4).code == "upstream_bad_response"  # a gap


# The retry schedule.


def test_backoff_doubles_to_its_cap_with_half_of_it_random():
    backoff = Backoff(base=0.25, cap=30.0)
    low, high = random.Random(0), random.Random(0)
    low.uniform = lambda a, b: a  # type: ignore[method-assign]
    high.uniform = lambda a, b: b  # type: ignore[method-assign]
    assert [backoff.delay(n, low) for n in (1, 2, 3, 4)] == [0.125, 0.25, 0.5, 1.0]
    assert [backoff.delay(n, high) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 2.0]
    assert backoff.delay(1000, high) == 30.0
    assert backoff.delay(1000, low) == 15.0


@given(st.integers(0, 10_000), st.integers(0, 2**32))
def test_every_wait_is_bounded(failures, seed):
    for backoff in RETRY.values():
        delay = backoff.delay(failures, random.Random(seed))
        assert backoff.base / 2 <= delay <= backoff.cap


def test_a_refused_token_is_retried_slowly():
    assert RETRY[Link.REFUSED].delay(1, random.Random(0)) >= 2.5
    assert max(b.cap for b in RETRY.values()) <= 60


# When a change is news.

OFFLINE = Failure(Link.OFFLINE, "upstream_unreachable", "connection refused")
BAD = Failure(Link.FAULTY, "feed_bad_checksum", "checksum")


def test_each_change_of_state_is_news_once():
    follower = Follower(random.Random(1))
    steps = [
        follower.succeeded(),
        follower.succeeded(),
        follower.failed(OFFLINE),
        follower.failed(OFFLINE),
        follower.failed(OFFLINE),
        follower.failed(BAD),
        follower.failed(Failure(Link.FAULTY, "feed_out_of_order", "order")),
        follower.succeeded(),
    ]
    assert [s.news for s in steps] == [True, False, True, False, False, True, True, True]
    assert [s.link for s in steps][-3:] == [Link.FAULTY, Link.FAULTY, Link.CONNECTED]


def test_waits_grow_while_failing_and_reset_on_success():
    follower = Follower(random.Random(2))
    waits = [follower.failed(OFFLINE).delay for _ in range(12)]
    assert all(a < b for a, b in itertools.pairwise(waits[:7]))
    assert all(w <= 30.0 for w in waits) and waits[-1] >= 15.0
    assert follower.succeeded().delay == 0.0
    assert follower.failed(OFFLINE).delay <= 0.25


def test_a_failure_is_of_a_failing_state():
    with pytest.raises(ValueError):
        Failure(Link.CONNECTED, "x", "y")


def test_the_upstream_may_ask_for_a_longer_wait_within_the_cap():
    follower = Follower(random.Random(3))
    assert follower.failed(Failure(Link.OFFLINE, "x", "y", retry_after=7.0)).delay >= 7.0
    assert follower.failed(Failure(Link.OFFLINE, "x", "y", retry_after=3600)).delay <= 30.0
