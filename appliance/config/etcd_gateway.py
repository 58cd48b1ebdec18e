"""etcd v3's JSON gateway, sans-IO: request bodies out, response bodies in, no sockets.

etcd (3.4 and later) serves its gRPC API as JSON over HTTP (grpc-gateway) at `/v3/...`:
keys and values are base64, 64-bit integers are JSON strings, and fields at their zero
value are left out (a PUT event has no `type`, a failed txn no `succeeded`). `/v3/watch`
answers with a stream of JSON objects, one per line, each `{"result": WatchResponse}` or
`{"error": ...}`. Errors of unary calls are `{"error", "message", "code"}` (a gRPC code)
with a 4xx/5xx status.

Everything that reads what etcd sent raises `EtcdError` (or a subclass) on garbage; the
requests are plain dicts the driver posts as JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from appliance.config.errors import ConfigError

GRPC_OUT_OF_RANGE = 11  # "required revision has been compacted" / "is a future revision"


class EtcdError(ConfigError):
    """etcd refused a request or answered with something that is not its API."""

    status = 502


class EtcdUnreachable(EtcdError):
    """No answer: refused, reset, or timed out."""

    status = 503


class EtcdCompacted(EtcdError):
    """The revision asked for was compacted away: list again."""

    status = 410


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise EtcdError("etcd_malformed", f"etcd sent a {what} that is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EtcdError("etcd_malformed", f"etcd sent a {what} that is not base64") from None


def prefix_end(prefix: bytes) -> bytes:
    """The `range_end` that makes a range cover every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # etcd's "every key"


def _int(value: Any, what: str, default: int | None = 0) -> int:
    """A proto3 int64 as the gateway writes it: a decimal string (or absent = 0)."""
    if value is None and default is not None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) <= 20:
        return int(value)
    raise EtcdError("etcd_malformed", f"etcd sent a {what} that is not an integer")


# Requests.


def range_request(
    key: bytes,
    range_end: bytes | None = None,
    *,
    revision: int = 0,
    limit: int = 0,
    keys_only: bool = False,
    last_first: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    if revision:
        body["revision"] = revision
    if limit:
        body["limit"] = limit
    if keys_only:
        body["keys_only"] = True
    if last_first:
        body["sort_order"] = "DESCEND"
        body["sort_target"] = "KEY"
    return body


def put_request(key: bytes, value: bytes) -> dict[str, Any]:
    return {"key": b64(key), "value": b64(value)}


def create_request(key: bytes, value: bytes) -> dict[str, Any]:
    """A txn that puts `key` only if it does not exist (its create_revision is 0)."""
    return {
        "compare": [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
        "success": [{"request_put": put_request(key, value)}],
    }


def watch_request(key: bytes, range_end: bytes, start_revision: int) -> dict[str, Any]:
    """Watch a range from `start_revision`, with progress notifications (event-less
    responses whose header revision says every event up to it was sent) and large
    responses split into fragments."""
    return {
        "create_request": {
            "key": b64(key),
            "range_end": b64(range_end),
            "start_revision": start_revision,
            "progress_notify": True,
            "fragment": True,
        }
    }


# Responses.


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int


@dataclass(frozen=True)
class Header:
    cluster_id: str
    revision: int


@dataclass(frozen=True)
class RangeResult:
    header: Header
    kvs: tuple[KeyValue, ...]
    more: bool


def _object(body: Any, what: str) -> dict[str, Any]:
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise EtcdError("etcd_malformed", f"etcd's {what} is not JSON") from None
    if not isinstance(body, dict):
        raise EtcdError("etcd_malformed", f"etcd's {what} is not a JSON object")
    return body


def _header(body: dict[str, Any]) -> Header:
    header = body.get("header")
    if not isinstance(header, dict):
        raise EtcdError("etcd_malformed", "etcd's answer has no header")
    cluster = header.get("cluster_id", "")
    return Header(str(cluster), _int(header.get("revision"), "header revision"))


def _kv(raw: Any) -> KeyValue:
    if not isinstance(raw, dict):
        raise EtcdError("etcd_malformed", "etcd sent a key-value that is not an object")
    return KeyValue(
        key=unb64(raw.get("key"), "key"),
        value=unb64(raw.get("value", ""), "value"),
        mod_revision=_int(raw.get("mod_revision"), "mod_revision"),
    )


def read_error(status: int, body: bytes) -> EtcdError:
    """The error a non-2xx answer of a unary call means."""
    try:
        problem = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        problem = None
    message = f"HTTP {status}"
    code = None
    if isinstance(problem, dict):
        message = str(problem.get("message") or problem.get("error") or message)[:300]
        code = problem.get("code")
    if code == GRPC_OUT_OF_RANGE and "compacted" in message:
        return EtcdCompacted("etcd_compacted", f"etcd: {message}")
    if status >= 500 or status == 429:
        return EtcdUnreachable("etcd_unavailable", f"etcd answered HTTP {status}: {message}")
    return EtcdError("etcd_error", f"etcd answered HTTP {status}: {message}")


def read_range(body: bytes | dict[str, Any]) -> RangeResult:
    answer = _object(body, "range answer")
    kvs = answer.get("kvs", [])
    if not isinstance(kvs, list):
        raise EtcdError("etcd_malformed", "etcd's range answer has kvs that are not a list")
    return RangeResult(_header(answer), tuple(_kv(kv) for kv in kvs), answer.get("more") is True)


def read_txn(body: bytes | dict[str, Any]) -> tuple[Header, bool]:
    """The header and whether the txn's comparisons held."""
    answer = _object(body, "txn answer")
    return _header(answer), answer.get("succeeded") is True


@dataclass(frozen=True)
class Event:
    kind: str  # "PUT" or "DELETE"
    kv: KeyValue


@dataclass(frozen=True)
class WatchMessage:
    header: Header
    created: bool = False
    canceled: bool = False
    cancel_reason: str = ""
    compact_revision: int = 0
    fragment: bool = False
    events: tuple[Event, ...] = ()


def read_watch_line(line: bytes) -> WatchMessage:
    """One line of `/v3/watch`'s answer."""
    outer = _object(line, "watch answer")
    if "error" in outer:
        error = outer["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise EtcdError("etcd_error", f"etcd's watch failed: {str(message)[:300]}")
    result = outer.get("result")
    if not isinstance(result, dict):
        raise EtcdError("etcd_malformed", "etcd's watch answer has no result")
    events = result.get("events", [])
    if not isinstance(events, list):
        raise EtcdError("etcd_malformed", "etcd's watch answer has events that are not a list")
    parsed = []
    for event in events:
        if not isinstance(event, dict) or event.get("type", "PUT") not in ("PUT", "DELETE"):
            raise EtcdError("etcd_malformed", "etcd sent a watch event of no known type")
        parsed.append(Event(event.get("type", "PUT"), _kv(event.get("kv"))))
    # A cancellation for compaction carries no header revision; 0 stands for "unknown".
    header = result.get("header")
    return WatchMessage(
        header=_header(result) if isinstance(header, dict) else Header("", 0),
        created=result.get("created") is True,
        canceled=result.get("canceled") is True,
        cancel_reason=str(result.get("cancel_reason", ""))[:300],
        compact_revision=_int(result.get("compact_revision"), "compact_revision"),
        fragment=result.get("fragment") is True,
        events=tuple(parsed),
    )


class WatchReader:
    """Bytes of a watch stream in, whole watch messages out.

    Lines longer than `max_line` are refused (EtcdError `etcd_line_too_long`) before they
    are buffered whole; fragments of one response are joined into one message."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._fragments: list[Event] = []

    def feed(self, data: bytes) -> list[WatchMessage]:
        self._buffer += data
        messages = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if len(line) > self.max_line:
                raise self._too_long()
            if line.strip():
                message = self._join(read_watch_line(line))
                if message is not None:
                    messages.append(message)
        if len(self._buffer) > self.max_line:
            raise self._too_long()
        return messages

    def _too_long(self) -> EtcdError:
        return EtcdError(
            "etcd_line_too_long", f"etcd sent a watch answer over {self.max_line} bytes"
        )

    def _join(self, message: WatchMessage) -> WatchMessage | None:
        if message.fragment:
            self._fragments.extend(message.events)
            if sum(len(e.kv.value) for e in self._fragments) > self.max_line:
                raise self._too_long()
            return None
        if self._fragments:
            events = (*self._fragments, *message.events)
            self._fragments = []
            return WatchMessage(
                header=message.header,
                created=message.created,
                canceled=message.canceled,
                cancel_reason=message.cancel_reason,
                compact_revision=message.compact_revision,
                events=events,
            )
        return message
