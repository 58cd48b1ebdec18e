"""The message model: round trips, every refusal with its field, golden frames and the doc."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings

from appliance.bus import messages as m
from appliance.bus.codec import FrameDecoder, encode_frame
from appliance.bus.reasons import (
    BY_CODE,
    BY_NAME,
    REASONS,
    BadCbor,
    BadCrc,
    BadVarint,
    BadVersion,
    FrameTooLarge,
    InvalidMessage,
    MessageError,
    Truncated,
)
from tests.bus import spec_doc
from tests.bus.strategies import messages

# --- round trips -------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(messages)
def test_every_message_round_trips_through_a_frame(message: m.Message) -> None:
    wire = message.to_wire()
    assert m.parse(wire) == message
    frame = encode_frame(wire)
    (decoded,) = FrameDecoder().feed(frame)
    assert m.parse(decoded.body) == message
    decoder = FrameDecoder()  # and fed byte by byte
    events = [e for i in range(len(frame)) for e in decoder.feed(frame[i : i + 1])]
    assert [m.parse(e.body) for e in events] == [message]


def test_defaults_are_left_out_and_accepted_when_sent() -> None:
    message = m.Message(m.Publish(topic="a"))
    assert message.to_wire() == {"publish": {"topic": "a"}}
    explicit = {"hops": 0, "publish": {"topic": "a", "data": b"", "retain": False, "headers": {}}}
    assert m.parse(explicit) == message


def test_lists_become_tuples_so_values_stay_frozen() -> None:
    hello = m.Hello(versions=[1, 2])  # type: ignore[arg-type]
    assert hello.versions == (1, 2)
    with pytest.raises(AttributeError):
        hello.versions = (3,)  # type: ignore[misc]


def test_kinds_are_unique_and_named_as_registered() -> None:
    assert all(kind == cls.KIND for kind, cls in m.KINDS.items())
    assert set(m.KINDS) == {
        "hello",
        "welcome",
        "ping",
        "pong",
        "publish",
        "subscribe",
        "unsubscribe",
        "deliver",
        "request",
        "reply",
        "packet",
        "ack",
        "close",
        "register",
        "deregister",
        "query",
        "query_result",
        "reset_stream",
        "stop_sending",
    }


# --- refusals ----------------------------------------------------------------------------------

NODE = {"name": "n1"}
PING = {"ping": {"seq": 1, "time_us": 1}}
ACK = {"stream_id": 1, "acknowledge_offset": 5, "received_max_offset": 4, "window": 0}


def node(**fields: object) -> dict:
    return {"hello": {"versions": [1], "node": {**NODE, **fields}}}


BAD = [
    ([1], "", "bad_type"),
    ({}, "", "bad_kind"),
    ({"source": "a"}, "", "bad_kind"),
    ({**PING, "pong": {"seq": 1, "time_us": 1}}, "", "bad_kind"),
    ({"pub": {}}, "pub", "unknown_kind"),
    ({**PING, "colour": 1}, "colour", "unknown_field"),
    ({"ping": [1, 2]}, "ping", "bad_type"),
    ({"ping": {"seq": 1}}, "ping.time_us", "missing_field"),
    ({"ping": {"seq": 1, "time_us": 1, "x": 0}}, "ping.x", "unknown_field"),
    ({"ping": {"seq": -1, "time_us": 1}}, "ping.seq", "bad_value"),
    ({"ping": {"seq": 2**63, "time_us": 1}}, "ping.seq", "bad_value"),
    ({"ping": {"seq": 1.0, "time_us": 1}}, "ping.seq", "bad_type"),
    ({"ping": {"seq": True, "time_us": 1}}, "ping.seq", "bad_type"),
    ({"ping": {"seq": None, "time_us": 1}}, "ping.seq", "bad_type"),
    ({**PING, "source": ""}, "source", "bad_value"),
    ({**PING, "source": "-a"}, "source", "bad_value"),
    ({**PING, "destination": "a" * 254}, "destination", "bad_value"),
    ({**PING, "hops": 256}, "hops", "bad_value"),
    ({**PING, "forward_for_connection": "3"}, "forward_for_connection", "bad_type"),
    ({"hello": {}}, "hello.versions", "missing_field"),
    ({"hello": {"versions": []}}, "hello.versions", "bad_value"),
    ({"hello": {"versions": [1, 1]}}, "hello.versions", "bad_value"),
    ({"hello": {"versions": [0]}}, "hello.versions.0", "bad_value"),
    ({"hello": {"versions": 1}}, "hello.versions", "bad_type"),
    ({"hello": {"versions": [1], "token": "with space"}}, "hello.token", "bad_value"),
    ({"hello": {"versions": [1], "token": "t" * 513}}, "hello.token", "bad_value"),
    ({"hello": {"versions": [1], "node": "n1"}}, "hello.node", "bad_type"),
    ({"hello": {"versions": [1], "node": {}}}, "hello.node.name", "missing_field"),
    (node(labels={"a b": "c"}), "hello.node.labels.a b", "bad_value"),
    (node(labels={"a": "-c"}), "hello.node.labels.a", "bad_value"),
    (node(labels={"a": 1}), "hello.node.labels.a", "bad_type"),
    (node(labels={f"k{i}": "v" for i in range(65)}), "hello.node.labels", "bad_value"),
    (node(metadata={"kind": "a b"}), "hello.node.metadata.kind", "bad_value"),
    (
        node(metadata={"annotations": {"a": "x" * 4097}}),
        "hello.node.metadata.annotations.a",
        "bad_value",
    ),
    (node(host={"hostname": "h", "pid": 0}), "hello.node.host.pid", "bad_value"),
    (node(host={"pid": 1}), "hello.node.host.hostname", "missing_field"),
    ({"hello": {"versions": [1], "will": {"data": b""}}}, "hello.will.topic", "missing_field"),
    (
        {"welcome": {"version": 1, "connection": 1, "max_frame": 0}},
        "welcome.max_frame",
        "bad_value",
    ),
    ({"publish": {"topic": ""}}, "publish.topic", "bad_value"),
    ({"publish": {"topic": "t" * 256}}, "publish.topic", "bad_value"),
    ({"publish": {"topic": "a", "data": "text"}}, "publish.data", "bad_type"),
    ({"publish": {"topic": "a", "retain": 1}}, "publish.retain", "bad_type"),
    ({"publish": {"topic": "a", "headers": {"a:b": "v"}}}, "publish.headers.a:b", "bad_value"),
    ({"publish": {"topic": "a", "headers": []}}, "publish.headers", "bad_type"),
    ({"subscribe": {"sid": 1, "pattern": "a", "policy": "wait"}}, "subscribe.policy", "bad_value"),
    ({"subscribe": {"sid": 1, "pattern": "a", "group": ""}}, "subscribe.group", "bad_value"),
    ({"deliver": {"sid": 1, "topic": "a", "gap": -1}}, "deliver.gap", "bad_value"),
    ({"request": {"id": 1, "topic": "a", "timeout_us": 0}}, "request.timeout_us", "bad_value"),
    ({"request": {"id": 1, "topic": "a"}}, "request.timeout_us", "missing_field"),
    ({"reply": {"id": 1, "status": "maybe"}}, "reply.status", "bad_value"),
    (
        {"packet": {"stream_id": 1, "offset": 2**63 - 2, "data": b"abc"}},
        "packet.offset",
        "bad_value",
    ),
    ({"ack": ACK}, "ack.received_max_offset", "bad_value"),
    ({"close": {"code": 65536}}, "close.code", "bad_value"),
    ({"close": {"code": 0, "text": "x" * 1025}}, "close.text", "bad_value"),
    (
        {"query_result": {"id": 1, "nodes": [NODE, {"name": ""}]}},
        "query_result.nodes.1.name",
        "bad_value",
    ),
    ({"query_result": {"id": 1, "nodes": [NODE, 5]}}, "query_result.nodes.1", "bad_type"),
]


@pytest.mark.parametrize(("wire", "field", "problem"), BAD, ids=[f"{b[1]}:{b[2]}" for b in BAD])
def test_bad_message_names_the_field(wire: object, field: str, problem: str) -> None:
    with pytest.raises(MessageError) as caught:
        m.parse(wire)
    assert (caught.value.field, caught.value.problem) == (field, problem)
    assert caught.value.code == "bad_message" and caught.value.reason.code == 20
    assert field in str(caught.value)


def test_building_an_invalid_message_is_a_local_error() -> None:
    with pytest.raises(InvalidMessage) as caught:
        m.Publish(topic="a", data="not bytes")  # type: ignore[arg-type]
    assert caught.value.field == "data" and isinstance(caught.value, ValueError)
    with pytest.raises(InvalidMessage) as caught:
        m.NodeRecord(name="n", host=m.Host(hostname="h", pid=-1))
    assert caught.value.field == "pid"
    with pytest.raises(InvalidMessage):
        m.Message("publish")  # type: ignore[arg-type]


# --- close reasons -----------------------------------------------------------------------------


def test_reasons_have_unique_codes_and_names() -> None:
    assert len(BY_CODE) == len(BY_NAME) == len(REASONS)
    assert all(0 <= r.code <= 65535 for r in REASONS)


@pytest.mark.parametrize(
    "error", [BadVarint, BadVersion, FrameTooLarge, BadCrc, BadCbor, Truncated, MessageError]
)
def test_every_error_code_is_a_close_reason(error: type) -> None:
    assert error.code in BY_NAME


# --- golden frames and the doc -----------------------------------------------------------------

GOLDEN = json.loads(spec_doc.GOLDEN_JSON.read_text())


def test_golden_file_is_what_the_code_produces() -> None:
    assert spec_doc.golden_entries() == GOLDEN
    assert len(GOLDEN) >= 10


@pytest.mark.parametrize("entry", GOLDEN, ids=[g["name"] for g in GOLDEN])
def test_golden_frame_both_ways(entry: dict) -> None:
    message = spec_doc.GOLDEN_BY_NAME[entry["name"]]
    assert encode_frame(message.to_wire()).hex() == entry["hex"]
    (frame,) = FrameDecoder().feed(bytes.fromhex(entry["hex"]))
    assert spec_doc.to_json(frame.body) == entry["body"]
    assert m.parse(frame.body) == message


@pytest.mark.parametrize("section", ["messages", "reasons", "golden"])
def test_doc_sections_match_the_code(section: str) -> None:
    doc = spec_doc.DOC.read_text()
    assert spec_doc.doc_section(doc, section) == spec_doc.sections()[section], (
        "docs/bus-protocol.md is stale: run .venv/bin/python -m tests.bus.spec_doc --write"
    )


def test_doc_shows_every_golden_hex() -> None:
    doc = spec_doc.DOC.read_text()
    for entry in GOLDEN:
        assert f"frame   {entry['hex']}" in doc
