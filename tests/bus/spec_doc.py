"""The generated parts of docs/bus-protocol.md, and the golden frames.

The golden messages are defined here; their frames are written to `golden_frames.json`
and, with the message field tables and the close reasons, rendered into the doc between
`<!-- NAME:begin -->` and `<!-- NAME:end -->` markers. The tests check that the JSON and
the doc are what this module renders now, so neither can drift from the code.

Regenerate after a deliberate wire change:  .venv/bin/python -m tests.bus.spec_doc --write
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import cbor2

from appliance.bus.codec import encode_frame
from appliance.bus.messages import (
    KINDS,
    Acknowledge,
    Close,
    Deliver,
    Head,
    Hello,
    Host,
    Message,
    Metadata,
    NodeRecord,
    Packet,
    Ping,
    Pong,
    Publish,
    Query,
    QueryResult,
    Record,
    Reply,
    Request,
    ResetStream,
    StopSending,
    Subscribe,
    Welcome,
    Will,
)
from appliance.bus.reasons import REASONS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "bus-protocol.md"
GOLDEN_JSON = Path(__file__).resolve().parent / "golden_frames.json"

_SENSOR = NodeRecord(
    name="sensor-1",
    version="1.4.0",
    labels={"site": "plant-a", "line": "3"},
    metadata=Metadata(namespace="factory", kind="driver", api_version="v1"),
    host=Host(hostname="edge-01", pid=4242),
)

GOLDEN: list[tuple[str, str, Message]] = [
    (
        "hello",
        "A client's first frame: versions it speaks, its token, its node record.",
        Message(Hello(versions=(1,), token="apl_0123abcd_secret", node=_SENSOR)),
    ),
    (
        "welcome",
        "The endpoint's answer: version 1 chosen, connection 17, frames up to 1 MiB.",
        Message(
            Welcome(version=1, connection=17, max_frame=1 << 20),
            Head(source="edge-01", destination="sensor-1"),
        ),
    ),
    ("ping", "Liveness probe, sent time in µs.", Message(Ping(seq=7, time_us=1_700_000_000_000))),
    (
        "pong",
        "The ping's seq and time echoed, plus the responder's clock.",
        Message(Pong(seq=7, time_us=1_700_000_000_000, peer_time_us=1_700_000_000_250)),
    ),
    (
        "publish",
        "A 2-byte sample to a topic, retained as the topic's last value.",
        Message(
            Publish(topic="plant.line3.temp", data=b"\x01\x02", retain=True),
            Head(source="sensor-1"),
        ),
    ),
    (
        "subscribe",
        "Subscription 1 in queue group `workers`, keeping only the latest when slow.",
        Message(Subscribe(sid=1, pattern="plant.*.temp", group="workers", policy="latest")),
    ),
    (
        "deliver",
        "A message for subscription 1, after 3 were dropped for it.",
        Message(Deliver(sid=1, topic="plant.line3.temp", data=b"\x01\x02", gap=3)),
    ),
    (
        "request",
        "A call to a service topic with a 2 s deadline and a content-type header.",
        Message(
            Request(
                id=42,
                topic="svc.config.get",
                timeout_us=2_000_000,
                data=b'{"key":"a"}',
                headers={"content-type": "application/json"},
            )
        ),
    ),
    (
        "reply",
        "The endpoint's immediate answer when nobody serves the topic.",
        Message(Reply(id=42, status="no_responders")),
    ),
    (
        "packet",
        "Stream 5, bytes 1024..1027, with a timepoint to echo.",
        Message(
            Packet(stream_id=5, offset=1024, data=b"abcd", time_us=123_456),
            Head(destination="logger"),
        ),
    ),
    (
        "ack",
        "All of stream 5 before 1028 arrived; window 64 KiB more.",
        Message(
            Acknowledge(
                stream_id=5,
                acknowledge_offset=1028,
                received_max_offset=1028,
                window=65536,
                time_us=123_456,
            )
        ),
    ),
    (
        "reset_stream",
        "The sender abandons stream 5: its sender went away (the endpoint's relay says so).",
        Message(ResetStream(stream_id=5, code=47, text="sensor-1 went away")),
    ),
    (
        "stop_sending",
        "The receiver refuses the rest of stream 5: its destination never came back.",
        Message(StopSending(stream_id=5, code=46, text="dashboard did not come back in 60 s")),
    ),
    (
        "query",
        "Discovery: nodes whose labels match a selector.",
        Message(Query(id=9, selector="site=plant-a,line in (3,4)")),
    ),
    (
        "query_result",
        "The answer: one node record.",
        Message(QueryResult(id=9, nodes=(NodeRecord(name="sensor-1", labels={"line": "3"}),))),
    ),
    (
        "relayed_publish",
        "A publish forwarded by a link: the relay fills the forward fields and counts hops.",
        Message(
            Publish(topic="plant.line3.temp", data=b"\x01"),
            Head(
                source="sensor-1",
                forward_for_source="edge-02",
                forward_for_connection=3,
                hops=1,
            ),
        ),
    ),
    (
        "close",
        "The last frame: reason 32 (forbidden) with a text.",
        Message(Close(code=32, text="publish to plant.> is not allowed")),
    ),
]


def to_json(value: Any) -> Any:
    """A decoded body as JSON: byte strings become {"bytes": "<hex>"}."""
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def diagnostic(value: Any) -> str:
    """CBOR diagnostic notation (RFC 8949 §8) of a decoded value."""
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{diagnostic(k)}: {diagnostic(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(diagnostic(item) for item in value) + "]"
    return repr(value)


def golden_entries() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "description": text,
            "hex": encode_frame(message.to_wire()).hex(),
            "body": to_json(message.to_wire()),
        }
        for name, text, message in GOLDEN
    ]


def _spaced(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _wrapped(label: str, data: bytes, width: int = 24) -> list[str]:
    lines = [_spaced(data[i : i + width]) for i in range(0, len(data), width)] or [""]
    return [(label if i == 0 else " " * len(label)) + line for i, line in enumerate(lines)]


def render_golden(entries: list[dict[str, Any]]) -> str:
    out = []
    for entry in entries:
        frame = bytes.fromhex(entry["hex"])
        message = GOLDEN_BY_NAME[entry["name"]].to_wire()
        payload_len = len(cbor2.dumps(message))
        head = frame[: len(frame) - 4 - payload_len]
        out += [
            f"#### `{entry['name']}`",
            "",
            entry["description"],
            "",
            "```text",
            f"frame   {entry['hex']}",
            f"header  {_spaced(head)}    (version {head[0]}, length {payload_len})",
            *_wrapped("body    ", frame[len(head) : -4]),
            f"crc32   {_spaced(frame[-4:])}",
            "```",
            "",
            "```cbor-diag",
            diagnostic(message),
            "```",
            "",
        ]
    return "\n".join(out).rstrip("\n")


def render_messages() -> str:
    out = [
        "| kind | field | type | default |",
        "|---|---|---|---|",
    ]

    def rows(label: str, cls: type[Record]) -> None:
        for name, check, default in cls._specs:
            shown = "required" if default is dataclasses.MISSING else _default_text(default)
            out.append(f"| {label} | `{name}` | {check.describe} | {shown} |")

    rows("*(head)*", Head)
    for kind, cls in KINDS.items():
        rows(f"`{kind}`", cls)
    for cls in (NodeRecord, Metadata, Host, Will):
        rows(f"*{cls.__name__}*", cls)
    return "\n".join(out)


def _default_text(default: Any) -> str:
    if default is None:
        return "absent"
    if default in ({}, (), b"", ""):
        return "empty"
    return f"`{diagnostic(default)}`"


def render_reasons() -> str:
    out = ["| code | name | meaning |", "|---|---|---|"]
    out += [f"| {r.code} | `{r.name}` | {r.meaning} |" for r in REASONS]
    return "\n".join(out)


def sections() -> dict[str, str]:
    return {
        "messages": render_messages(),
        "reasons": render_reasons(),
        "golden": render_golden(golden_entries()),
    }


def doc_section(text: str, name: str) -> str | None:
    found = re.search(rf"<!-- {name}:begin -->\n(.*?)\n?<!-- {name}:end -->", text, re.S)
    return found.group(1) if found else None


def write() -> None:
    GOLDEN_JSON.write_text(json.dumps(golden_entries(), indent=2, ensure_ascii=False) + "\n")
    text = DOC.read_text()
    for name, body in sections().items():
        if doc_section(text, name) is None:
            sys.exit(f"{DOC}: no <!-- {name}:begin/end --> markers")
        text = re.sub(
            rf"(<!-- {name}:begin -->\n).*?\n?(<!-- {name}:end -->)",
            lambda m, body=body: m.group(1) + body + "\n" + m.group(2),
            text,
            flags=re.S,
        )
    DOC.write_text(text)


GOLDEN_BY_NAME = {name: message for name, _, message in GOLDEN}

if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(json.dumps(sections(), indent=2, ensure_ascii=False))
