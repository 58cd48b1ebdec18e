"""Feed entries: checksums over canonical JSON, order, shape."""

from __future__ import annotations

import json

import pytest

from appliance.config.errors import FeedError
from appliance.config.feed import check_entry, entry_checksum, event_of, make_entry

VERSION = {
    "number": 1,
    "format": "text",
    "content": "héllo",
    "sha256": "x",
    "author": "a",
    "comment": "",
    "created_at": 1.5,
}


def test_entries_survive_a_json_round_trip():
    entry = make_entry(7, "a/b/c/d", "version", VERSION, 1795431586.18)
    again = json.loads(json.dumps(entry))
    assert check_entry(again, 7) == entry
    assert entry_checksum(again) == entry["checksum"]


@pytest.mark.parametrize(
    ("change", "expected", "code"),
    [
        (lambda e: e.update(key="a/b/c/e"), 7, "feed_bad_checksum"),
        (lambda e: e["version"].update(content="hello"), 7, "feed_bad_checksum"),
        (lambda e: None, 8, "feed_out_of_order"),
        (lambda e: None, 6, "feed_out_of_order"),
        (lambda e: e.pop("checksum"), 7, "feed_malformed"),
        (lambda e: e.update(op="delete"), 7, "feed_malformed"),
        (lambda e: e.update(extra=1), 7, "feed_malformed"),
        (lambda e: e.update(revision="7"), 7, "feed_malformed"),
    ],
)
def test_bad_entries_are_refused(change, expected, code):
    entry = json.loads(json.dumps(make_entry(7, "a/b/c/d", "version", VERSION, 1.0)))
    change(entry)
    with pytest.raises(FeedError) as caught:
        check_entry(entry, expected)
    assert caught.value.code == code


def test_a_resigned_entry_with_a_bad_key_is_still_refused():
    entry = make_entry(1, "a/../c/d", "version", VERSION, 1.0)
    with pytest.raises(FeedError) as caught:
        check_entry(entry, 1)
    assert caught.value.code == "feed_malformed"


def test_events_carry_no_content():
    event = event_of(make_entry(3, "a/b/c/d", "version", VERSION, 2.0))
    assert event == {
        "revision": 3,
        "key": "a/b/c/d",
        "op": "version",
        "at": 2.0,
        "version": 1,
        "sha256": "x",
    }
