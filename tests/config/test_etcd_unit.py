"""The etcd layout and the JSON gateway's wire format, sans-IO: no etcd, no sockets.

The gateway's answers below are as etcd 3.4 writes them (int64 as strings, zero values
left out, a PUT event without `type`)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.config import Box, ConfigRepository, parse_key
from appliance.config.errors import ConfigError, FeedError
from appliance.config.etcd_gateway import (
    EtcdCompacted,
    EtcdError,
    EtcdUnreachable,
    Event,
    KeyValue,
    WatchReader,
    b64,
    create_request,
    prefix_end,
    read_error,
    read_range,
    read_txn,
    read_watch_line,
    unb64,
    watch_request,
)
from appliance.config.etcd_layout import (
    NotOurs,
    Place,
    check_prefix,
    entries_of,
    place_of,
    release_path,
    release_value,
    same_keys,
    snapshot_keys,
    version_path,
    version_value,
)
from appliance.config.feed import check_entry
from appliance.config.model import new_version
from appliance.config.service import ConfigService
from appliance.store import Store

P = "/appliance/config/"
KEY = parse_key("acme/pump/prod/limits")
HEADER = {"cluster_id": "151", "member_id": "136", "revision": "7", "raft_term": "2"}


def record(number: int, content: str = '{"a": 1}', fmt: str = "json") -> dict:
    version = new_version(number, fmt, content, author="ops", comment="", now=1.5, max_bytes=4096)
    return version.record()


def kv(path: bytes, value: bytes, revision: int = 5) -> KeyValue:
    return KeyValue(path, value, revision)


def version_kv(number: int, content: str = '{"a": 1}', key=KEY) -> KeyValue:
    return kv(version_path(P, key, number), version_value(record(number, content)))


def release_kv(rules: list, key=KEY) -> KeyValue:
    return kv(release_path(P, key), release_value(rules))


# The gateway.


def test_prefix_end_covers_exactly_the_prefix():
    assert prefix_end(b"/appliance/config/") == b"/appliance/config0"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") == b"\x00"


@given(st.binary(max_size=64))
def test_base64_round_trip(data):
    assert unb64(b64(data), "value") == data


@pytest.mark.parametrize("garbage", ["not base64!", "abc", 17, None])
def test_base64_garbage_is_the_remote_error(garbage):
    with pytest.raises(EtcdError) as caught:
        unb64(garbage, "key")
    assert caught.value.code == "etcd_malformed"


def test_requests_are_the_gateway_json():
    assert create_request(b"/k", b"v") == {
        "compare": [{"key": "L2s=", "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
        "success": [{"request_put": {"key": "L2s=", "value": "dg=="}}],
    }
    create = watch_request(b"/p/", b"/p0", 12)["create_request"]
    assert (create["key"], create["range_end"], create["start_revision"]) == ("L3Av", "L3Aw", 12)
    assert create["progress_notify"] and create["fragment"]


def test_range_answer():
    body = {
        "header": HEADER,
        "kvs": [
            {"key": b64("/p/a"), "create_revision": "2", "mod_revision": "3", "value": b64("x")},
            {"key": b64("/p/b"), "mod_revision": "4", "version": "1"},  # keys_only
        ],
        "more": True,
        "count": "5",
    }
    result = read_range(json.dumps(body).encode())
    assert (result.header.revision, result.header.cluster_id, result.more) == (7, "151", True)
    assert result.kvs == (KeyValue(b"/p/a", b"x", 3), KeyValue(b"/p/b", b"", 4))
    assert read_range({"header": HEADER}).kvs == ()  # an empty range has no kvs at all


def test_txn_answer_leaves_out_a_false_succeeded():
    assert read_txn({"header": HEADER, "succeeded": True})[1] is True
    assert read_txn({"header": HEADER})[1] is False


def test_errors_of_unary_calls():
    compacted = b'{"error":"etcdserver: mvcc: required revision has been compacted",'
    compacted += b'"message":"etcdserver: mvcc: required revision has been compacted","code":11}'
    assert isinstance(read_error(400, compacted), EtcdCompacted)
    assert isinstance(read_error(503, b"<html>"), EtcdUnreachable)
    bad = read_error(400, b'{"error":"x","message":"invalid character","code":3}')
    assert type(bad) is EtcdError and "invalid character" in bad.message


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"kvs": []}', b'{"header": {"revision": "x"}}', b'{"header": {}, "kvs": 1}'],
)
def test_garbage_range_answers_are_the_remote_error(body):
    with pytest.raises(EtcdError):
        read_range(body)


def test_watch_lines():
    created = read_watch_line(json.dumps({"result": {"header": HEADER, "created": True}}).encode())
    assert created.created and created.header.revision == 7 and not created.events
    events = {
        "result": {
            "header": HEADER,
            "events": [
                {"kv": {"key": b64("/p/a"), "mod_revision": "6", "value": b64("v")}},
                {"type": "DELETE", "kv": {"key": b64("/p/b"), "mod_revision": "7"}},
            ],
        }
    }
    message = read_watch_line(json.dumps(events).encode())
    assert [(e.kind, e.kv.key, e.kv.mod_revision) for e in message.events] == [
        ("PUT", b"/p/a", 6),
        ("DELETE", b"/p/b", 7),
    ]
    compacted = {
        "result": {
            "header": {"cluster_id": "151"},
            "canceled": True,
            "compact_revision": "9",
        }
    }
    message = read_watch_line(json.dumps(compacted).encode())
    assert message.canceled and message.compact_revision == 9
    with pytest.raises(EtcdError, match="watch failed"):
        read_watch_line(b'{"error": {"grpc_code": 14, "message": "unavailable"}}')


def _lines(*results: dict) -> bytes:
    return b"".join(json.dumps({"result": r}).encode() + b"\n" for r in results)


def test_watch_reader_same_messages_whole_and_byte_by_byte():
    stream = _lines(
        {"header": HEADER, "created": True},
        {"header": HEADER, "events": [{"kv": {"key": b64("/p/a"), "value": b64("1")}}]},
    )
    whole = WatchReader(1 << 20).feed(stream)
    reader = WatchReader(1 << 20)
    one_by_one = [m for i in range(len(stream)) for m in reader.feed(stream[i : i + 1])]
    assert whole == one_by_one and len(whole) == 2


def test_watch_reader_joins_fragments():
    event = {"kv": {"key": b64("/p/a"), "value": b64("1"), "mod_revision": "3"}}
    stream = _lines(
        {"header": HEADER, "fragment": True, "events": [event]},
        {"header": HEADER, "fragment": True, "events": [event, event]},
        {"header": HEADER, "events": [event]},
    )
    (message,) = WatchReader(1 << 20).feed(stream)
    assert len(message.events) == 4 and not message.fragment


def test_watch_reader_refuses_a_long_line_before_it_ends():
    reader = WatchReader(100)
    with pytest.raises(EtcdError) as caught:
        reader.feed(b"{" + b" " * 200)
    assert caught.value.code == "etcd_line_too_long"


@given(st.binary(max_size=300))
def test_watch_reader_garbage_parses_or_is_the_remote_error(data):
    try:
        WatchReader(1 << 16).feed(data + b"\n")
    except EtcdError:
        pass


# The layout.


def test_check_prefix():
    assert check_prefix("/a/b") == "/a/b/"
    assert check_prefix(P) == P
    for bad in ("", "/with space/", "/é/", "x" * 300):
        with pytest.raises(ConfigError):
            check_prefix(bad)


_segment = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True)


@given(st.tuples(_segment, _segment, _segment, _segment), st.integers(1, 9_999_999_999))
def test_paths_round_trip(segments, number):
    key = parse_key("/".join(segments))
    assert place_of(P, version_path(P, key, number)) == Place("version", str(key), number)
    assert place_of(P, release_path(P, key)) == Place("rules", str(key))


def test_version_paths_sort_by_number():
    assert version_path(P, KEY, 9) < version_path(P, KEY, 10) < version_path(P, KEY, 100)
    assert version_path(P, KEY, 12).endswith(b"/limits/0000000012")


@pytest.mark.parametrize(
    "path",
    [
        b"/other/versions/acme/pump/prod/limits/0000000001",
        P.encode() + b"versions/acme/pump/prod/limits/1",
        P.encode() + b"versions/acme/pump/prod/limits/0000000000",
        P.encode() + b"versions/acme/pump/limits/0000000001",
        P.encode() + b"releases/acme/pump/prod/.hidden",
        P.encode() + b"releases/acme/pump/prod/limits/extra",
        P.encode() + b"notes/acme",
        P.encode() + "releases/acme/pump/prod/\u00e9".encode(),
    ],
)
def test_keys_outside_the_layout_are_not_ours(path):
    with pytest.raises(NotOurs):
        place_of(P, path)


def test_listing_becomes_snapshot_keys():
    other = parse_key("acme/pump/dev/limits")
    kvs = [
        release_kv(
            [{"version": 1, "priority": 1}, {"version": 2, "priority": 5, "labels": {"a": "b"}}]
        ),
        version_kv(1),
        version_kv(2, '{"a": 2}'),
        version_kv(1, key=other),
        kv(P.encode() + b"README", b"hello"),
    ]
    keys, ignored = snapshot_keys(P, kvs, 4096)
    assert [item["key"] for item in keys] == ["acme/pump/dev/limits", "acme/pump/prod/limits"]
    prod = keys[1]
    assert [v["number"] for v in prod["versions"]] == [1, 2]
    assert [r["priority"] for r in prod["rules"]] == [5, 1]  # as the store keeps them
    assert keys[0]["rules"] == []
    assert len(ignored) == 1 and "README" in ignored[0]


@pytest.mark.parametrize(
    ("kvs", "message"),
    [
        ([version_kv(1), version_kv(3)], "gaps"),
        ([version_kv(1), release_kv([{"version": 2, "priority": 0}])], "does not exist"),
        ([release_kv([{"version": 1, "priority": 0}])], "does not exist"),
        ([kv(version_path(P, KEY, 1), b"{not json")], "not JSON"),
        ([kv(version_path(P, KEY, 1), version_value(record(2)))], "not 1"),
        ([kv(version_path(P, KEY, 1), version_value({**record(1), "sha256": "0" * 64}))], "sha256"),
        ([version_kv(1), kv(release_path(P, KEY), b"[]")], "rules"),
    ],
)
def test_an_inconsistent_listing_is_refused(kvs, message):
    with pytest.raises(FeedError, match=message):
        snapshot_keys(P, kvs, 4096)


def test_a_release_with_no_rules_and_no_versions_is_nothing():
    assert snapshot_keys(P, [release_kv([])], 4096) == ([], [])


def test_same_keys_ignores_order_of_keys_only():
    keys, _ = snapshot_keys(P, [version_kv(1), version_kv(1, key=parse_key("a/b/c/d"))], 4096)
    assert same_keys(keys, list(reversed(keys)))
    assert not same_keys(keys, keys[:1])


def _entries(events, stored=None, next_revision=10):
    stored = stored or {}
    return entries_of(
        P,
        events,
        next_revision=next_revision,
        at=2.5,
        max_content_bytes=4096,
        stored_sha256=lambda key, number: stored.get((key, number)),
    )


def test_events_become_feed_entries():
    put = [
        Event("PUT", version_kv(1)),
        Event("PUT", version_kv(2, '{"a": 2}')),
        Event("PUT", release_kv([{"version": 2, "priority": 0}])),
        Event("DELETE", kv(release_path(P, KEY), b"")),
    ]
    entries, ignored = _entries(put)
    assert ignored == []
    assert [(e["revision"], e["op"]) for e in entries] == [
        (10, "version"),
        (11, "version"),
        (12, "rules"),
        (13, "rules"),
    ]
    assert entries[1]["version"] == record(2, '{"a": 2}')
    assert entries[2]["rules"] == [{"version": 2, "priority": 0}]
    assert entries[3]["rules"] == []
    for entry in entries:
        assert check_entry(entry, entry["revision"]) is entry  # checksums hold


def test_events_that_change_nothing_are_ignored():
    sha = record(1)["sha256"]
    events = [
        Event("PUT", version_kv(1)),  # put again, same content
        Event("DELETE", kv(version_path(P, KEY, 1), b"")),  # versions are immutable
        Event("PUT", kv(P.encode() + b"README", b"x")),  # not in the layout
        Event("DELETE", kv(release_path(P, parse_key("a/b/c/d")), b"")),  # key has no versions
    ]
    entries, ignored = _entries(events, stored={(str(KEY), 1): sha})
    assert entries == [] and len(ignored) == 4


def test_an_overwritten_version_is_refused():
    with pytest.raises(FeedError) as caught:
        _entries([Event("PUT", version_kv(1, '{"a": 9}'))], stored={(str(KEY), 1): "0" * 64})
    assert caught.value.code == "etcd_version_changed"
    with pytest.raises(FeedError):  # also within one batch
        _entries([Event("PUT", version_kv(1)), Event("PUT", version_kv(1, '{"a": 9}'))])


# What the conversions make passes the core's checks in a real store.


@pytest.fixture
async def replica(tmp_path, nursery):
    store = Store.open(tmp_path / "replica")
    await nursery.start(store.serve)
    repository = ConfigRepository(store, max_content_bytes=4096, log_retention=100)
    yield ConfigService(repository, Box("box-1", {}), mode="replica")
    nursery.cancel_scope.cancel()
    store.close()


async def test_listing_installs_and_events_apply(replica):
    keys, _ = snapshot_keys(P, [version_kv(1), release_kv([{"version": 1, "priority": 0}])], 4096)
    assert await replica.install_snapshot({"revision": 1, "keys": keys}) == 1
    assert same_keys(replica.repository.snapshot()["keys"], keys)
    stored = {(str(KEY), 1): replica.repository.version(KEY, 1).sha256}
    entries, _ = _entries(
        [Event("PUT", version_kv(1)), Event("PUT", version_kv(2, "{}"))], stored, next_revision=2
    )
    assert await replica.apply(entries) == 2
    assert [v.number for v in replica.repository.versions(KEY)] == [1, 2]
    bad, _ = _entries([Event("PUT", release_kv([{"version": 7, "priority": 0}]))], next_revision=3)
    with pytest.raises(FeedError):
        await replica.apply(bad)
    assert replica.repository.head()["revision"] == 2
