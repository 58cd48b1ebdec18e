"""The bus message model: a head and exactly one body, as frozen values.

On the wire a message is one CBOR map: the head's fields (all optional) beside exactly one
key naming the body's kind, whose value is the body's map:

    {"source": "sensor-1", "publish": {"topic": "line1.temp", "data": h'...'}}

Each field is declared once, with the check that guards it (`_Field` subclasses in the
dataclass field metadata). Building a value checks every field (`InvalidMessage`, a local
error); `parse` turns a decoded body into a `Message` through the same checks and reports
the peer's mistakes as `MessageError` naming the field (`publish.topic`). Unknown kinds,
unknown fields, missing fields, nulls and wrong types are all refused. Optional fields
equal to their default are left out by `to_wire`. Pattern and selector *syntax* is checked
by `appliance.bus.topics` and `appliance.bus.selectors`, which the protocol layer calls;
here only their type and length. Payload sizes are bounded by the frame size.

Longer than our 400-line aim because it is one table: each record is a few declarative
lines, and the field checks above them are what the records declare; the doc's field
table (docs/bus-protocol.md) is generated from it.
"""

from __future__ import annotations

import abc
import dataclasses
import keyword
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from appliance.bus.reasons import InvalidMessage, MessageError

U63 = (1 << 63) - 1  # every integer fits a signed 64-bit int, for languages without u64
MAX_NAME = 253
MAX_TOPIC = 255
MAX_TEXT = 1024
MAX_SELECTOR = 4096
MAX_TOKEN = 512
MAX_LABELS = 64
MAX_HEADERS = 32
MAX_ANNOTATION = 4096
MAX_VERSIONS = 16
MAX_NODES = 4096
MAX_TIMEOUT_US = 86_400 * 1_000_000
MAX_HOPS = 255
POLICIES = ("block", "drop", "latest")
STATUSES = ("ok", "error", "no_responders", "timeout")


class _Field(abc.ABC):
    """How one field is checked and carried. `check` returns the value to store (it may
    normalise, e.g. a list to a tuple) or raises `InvalidMessage` with `field` relative."""

    describe = ""

    @abc.abstractmethod
    def check(self, value: Any) -> Any: ...

    def from_wire(self, value: Any, path: str) -> Any:
        return value

    def to_wire(self, value: Any) -> Any:
        return value


_MISSING = dataclasses.MISSING


def _bad(problem: str, detail: str, where: str = "") -> InvalidMessage:
    return InvalidMessage(where, problem, detail)


class _Int(_Field):
    def __init__(self, low: int = 0, high: int = U63) -> None:
        self.low, self.high = low, high
        self.describe = f"uint {low}..{high}" if high != U63 else f"uint {low}..2^63-1"

    def check(self, value: Any) -> Any:
        if type(value) is not int:
            raise _bad("bad_type", f"expected an integer, got {type(value).__name__}")
        if not self.low <= value <= self.high:
            raise _bad("bad_value", f"{value} is outside {self.low}..{self.high}")
        return value


class _Bool(_Field):
    describe = "bool"

    def check(self, value: Any) -> Any:
        if type(value) is not bool:
            raise _bad("bad_type", f"expected a bool, got {type(value).__name__}")
        return value


class _Bytes(_Field):
    describe = "bytes (bounded by the frame)"

    def check(self, value: Any) -> Any:
        if not isinstance(value, bytes):
            raise _bad("bad_type", f"expected bytes, got {type(value).__name__}")
        return value


class _Text(_Field):
    def __init__(self, high: int, low: int = 1, pattern: str | None = None, what: str = "") -> None:
        self.low, self.high = low, high
        self.pattern = re.compile(pattern) if pattern else None
        self.what = what
        self.describe = f"text {low}..{high} bytes" + (f", {what}" if what else "")

    def check(self, value: Any) -> Any:
        if type(value) is not str:
            raise _bad("bad_type", f"expected text, got {type(value).__name__}")
        size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
        if not self.low <= size <= self.high:
            raise _bad("bad_value", f"{size} bytes, not {self.low}..{self.high}")
        if self.pattern and size and not self.pattern.fullmatch(value):
            raise _bad("bad_value", f"{value[:64]!r} is not {self.what}")
        return value


class _Choice(_Field):
    def __init__(self, choices: tuple[str, ...]) -> None:
        self.choices = choices
        self.describe = " \\| ".join(f'"{c}"' for c in choices)

    def check(self, value: Any) -> Any:
        if type(value) is not str:
            raise _bad("bad_type", f"expected text, got {type(value).__name__}")
        if value not in self.choices:
            raise _bad("bad_value", f"{value[:64]!r} is not one of {', '.join(self.choices)}")
        return value


class _TextMap(_Field):
    def __init__(self, key: _Text, value: _Text, high: int) -> None:
        self.key, self.value, self.high = key, value, high
        self.describe = f"map of up to {high}: key {key.describe}; value {value.describe}"

    def check(self, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _bad("bad_type", f"expected a map, got {type(value).__name__}")
        if len(value) > self.high:
            raise _bad("bad_value", f"{len(value)} entries, more than {self.high}")
        for k, v in value.items():
            try:
                self.key.check(k)
                self.value.check(v)
            except InvalidMessage as exc:
                raise _bad(exc.problem, exc.detail, str(k)[:64]) from None
        return dict(value)

    def to_wire(self, value: Any) -> Any:
        return dict(value)  # a copy: the caller may change it, the record must not change


class _List(_Field):
    def __init__(self, item: _Field, low: int, high: int, *, unique: bool = False) -> None:
        self.item, self.low, self.high, self.unique = item, low, high, unique
        self.describe = f"array of {low}..{high} {item.describe}"

    def check(self, value: Any) -> Any:
        if not isinstance(value, tuple | list):
            raise _bad("bad_type", f"expected an array, got {type(value).__name__}")
        if not self.low <= len(value) <= self.high:
            raise _bad("bad_value", f"{len(value)} items, not {self.low}..{self.high}")
        for i, item in enumerate(value):
            try:
                self.item.check(item)
            except InvalidMessage as exc:
                raise _bad(exc.problem, exc.detail, _join(str(i), exc.field)) from None
        if self.unique and len(set(value)) != len(value):
            raise _bad("bad_value", "items repeat")
        return tuple(value)

    def from_wire(self, value: Any, path: str) -> Any:
        if isinstance(value, list):
            return [self.item.from_wire(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value

    def to_wire(self, value: Any) -> Any:
        return [self.item.to_wire(v) for v in value]


class _Nested(_Field):
    def __init__(self, cls: type[Record]) -> None:
        self.cls = cls
        self.describe = f"map: {cls.__name__}"

    def check(self, value: Any) -> Any:
        if not isinstance(value, self.cls):
            raise _bad("bad_type", f"expected {self.cls.__name__}, got {type(value).__name__}")
        return value

    def from_wire(self, value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return self.cls.from_wire(value, path)
        return value  # check() refuses it with bad_type

    def to_wire(self, value: Any) -> Any:
        return value.to_wire()


def _w(check: _Field) -> dict[str, _Field]:
    return {"wire": check}


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path and name else path or name


class Record:
    """Base of every frozen message value; its dataclass fields carry `_w(check)`."""

    __slots__ = ()
    # (name, check, default or MISSING), filled per class by `_fields`.
    _specs: ClassVar[tuple[tuple[str, _Field, Any], ...]] = ()
    _names: ClassVar[frozenset[str]] = frozenset()
    # (name, to_wire or None when the value is carried as is, default or MISSING).
    _wire_specs: ClassVar[tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]] = ()
    # Every field carried as is (no nested maps or arrays): `from_wire` has a fast path.
    _flat: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for name, check, default in type(self)._specs:
            value = getattr(self, name)
            if value is None and default is None:
                continue
            try:
                stored = check.check(value)
            except InvalidMessage as exc:
                where = f"{name}.{exc.field}" if exc.field else name
                raise InvalidMessage(where, exc.problem, exc.detail) from None
            if stored is not value:
                object.__setattr__(self, name, stored)
        self._validate()

    def _validate(self) -> None:
        """Checks across fields; raise `InvalidMessage`."""

    @classmethod
    def trusted(cls, **values: Any) -> Any:
        """Build without checking: only for values the endpoint itself derives from
        messages already checked (a deliver from a publish, a routed head), on the hot
        path. Missing fields take their defaults; nothing is validated."""
        obj = object.__new__(cls)
        for name, _, default in cls._specs:
            object.__setattr__(obj, name, values.get(name, default))
        return obj

    def trusted_replace(self, **changes: Any) -> Any:
        """`dataclasses.replace` without checking: as `trusted`, only for values the
        endpoint derives from messages already checked (a routed request's id)."""
        obj = object.__new__(type(self))
        for name, _, _ in type(self)._specs:
            object.__setattr__(obj, name, changes[name] if name in changes else getattr(self, name))
        return obj

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, convert, default in type(self)._wire_specs:
            value = getattr(self, name)
            if default is not _MISSING and value == default:
                continue
            out[name] = value if convert is None else convert(value)
        return out

    @classmethod
    def from_wire(cls, wire: dict[str, Any], path: str) -> Any:
        """Build from a decoded map; errors name fields under `path`."""
        if cls._flat:
            # The hot path: good input is built with the same checks and less overhead;
            # anything wrong goes through the general path below, which explains it.
            obj = cls._from_wire_fast(wire)
            if obj is not None:
                return obj
        return cls._from_wire_checked(wire, path)

    @classmethod
    def _from_wire_fast(cls, wire: dict[str, Any]) -> Any:
        if not cls._names.issuperset(wire) or None in wire.values():
            return None
        obj = object.__new__(cls)
        setattr_ = object.__setattr__
        try:
            for name, check, default in cls._specs:
                if name in wire:
                    setattr_(obj, name, check.check(wire[name]))
                elif default is dataclasses.MISSING:
                    return None
                else:
                    setattr_(obj, name, {} if type(default) is dict else default)
            obj._validate()
        except InvalidMessage:
            return None
        return obj

    @classmethod
    def _from_wire_checked(cls, wire: dict[str, Any], path: str) -> Any:
        if not cls._names.issuperset(wire):
            key = next(key for key in wire if key not in cls._names)
            name = _join(path, str(key)[:64])
            raise InvalidMessage(name, "unknown_field", "not a field of this map")
        kwargs: dict[str, Any] = {}
        for name, check, default in cls._specs:
            if name in wire:
                value = wire[name]
                if value is None:
                    raise InvalidMessage(_join(path, name), "bad_type", "null is not a value")
                kwargs[name] = check.from_wire(value, _join(path, name))
            elif default is dataclasses.MISSING:
                raise InvalidMessage(_join(path, name), "missing_field", "required")
        try:
            return cls(**kwargs)
        except InvalidMessage as exc:  # the field is relative to this map
            raise InvalidMessage(_join(path, exc.field), exc.problem, exc.detail) from None


def _fields(cls: type[Record]) -> type[Record]:
    specs = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        specs.append((f.name, f.metadata["wire"], default))
    cls._specs = tuple(specs)
    cls._names = frozenset(name for name, _, _ in specs)
    cls._wire_specs = tuple(
        (name, None if type(check).to_wire is _Field.to_wire else check.to_wire, default)
        for name, check, default in specs
    )
    cls._flat = all(type(check).from_wire is _Field.from_wire for _, check, _ in specs)
    cls.to_wire = _compiled_to_wire(cls)  # type: ignore[method-assign]
    if not any(keyword.iskeyword(name) for name in cls._names):
        cls.trusted = classmethod(_compiled_trusted(cls))  # type: ignore[assignment]
    if cls._flat:
        cls._from_wire_fast = classmethod(_compiled_from_wire_fast(cls))  # type: ignore[assignment]
    return cls


# The hot paths of `Record.to_wire` and `Record._from_wire_fast`, written out per class
# (no loop over the specs, no getattr): the same steps in the same order, so the same
# maps and the same refusals. tests/bus/test_messages.py holds them to the generic ones.


def _compiled_to_wire(cls: type[Record]) -> Callable[[Record], dict[str, Any]]:
    env: dict[str, Any] = {}
    lines = ["def to_wire(self):", "    out = {}"]
    for i, (name, convert, default) in enumerate(cls._wire_specs):
        env[f"default{i}"], env[f"convert{i}"] = default, convert
        value = "value" if convert is None else f"convert{i}(value)"
        lines.append(f"    value = self.{name}")
        if default is _MISSING:
            lines.append(f"    out[{name!r}] = {value}")
        else:
            lines.append(f"    if not value == default{i}:")
            lines.append(f"        out[{name!r}] = {value}")
    lines.append("    return out")
    exec("\n".join(lines), env)  # generated from the class's own fields
    return env["to_wire"]


def _compiled_trusted(cls: type[Record]) -> Callable[..., Any]:
    env: dict[str, Any] = {"setattr_": object.__setattr__, "new": object.__new__}
    params, lines = [], []
    for i, (name, _, default) in enumerate(cls._specs):
        env[f"default{i}"] = default
        params.append(f"{name}=default{i}")
        lines.append(f"    setattr_(obj, {name!r}, {name})")
    head = f"def trusted(cls, *, {', '.join(params)}):" if params else "def trusted(cls):"
    source = "\n".join([head, "    obj = new(cls)", *lines, "    return obj"])
    exec(source, env)  # generated from the class's own fields
    return env["trusted"]


def _compiled_from_wire_fast(cls: type[Record]) -> Callable[..., Any]:
    env: dict[str, Any] = {"InvalidMessage": InvalidMessage, "names": cls._names}
    env["setattr_"], env["new"] = object.__setattr__, object.__new__
    lines = [
        "def _from_wire_fast(cls, wire):",
        "    if not names.issuperset(wire) or None in wire.values():",
        "        return None",
        "    obj = new(cls)",
        "    try:",
    ]
    for i, (name, check, default) in enumerate(cls._specs):
        env[f"check{i}"], env[f"default{i}"] = check.check, default
        lines.append(f"        if {name!r} in wire:")
        lines.append(f"            setattr_(obj, {name!r}, check{i}(wire[{name!r}]))")
        if default is dataclasses.MISSING:
            lines.append("        else:")
            lines.append("            return None")
        else:
            fresh = "{}" if type(default) is dict else f"default{i}"
            lines.append("        else:")
            lines.append(f"            setattr_(obj, {name!r}, {fresh})")
    lines += ["        obj._validate()", "    except InvalidMessage:", "        return None"]
    lines.append("    return obj")
    exec("\n".join(lines), env)  # generated from the class's own fields
    return env["_from_wire_fast"]


_NAME_CHARS = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_DNS = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
NAME = _Text(MAX_NAME, pattern=_NAME_CHARS, what="a name ([A-Za-z0-9], inner -_.)")
GROUP = _Text(64, what="syntax: appliance.bus.topics")
WORD = _Text(MAX_NAME, pattern=r"[\x21-\x7e]+", what="printable ASCII, no spaces")
TOPIC = _Text(MAX_TOPIC, what="syntax: appliance.bus.topics")
FREE_TEXT = _Text(MAX_TEXT, low=0)
LABEL_KEY = _Text(
    MAX_NAME + 64,
    pattern=rf"(?:{_DNS}/)?{_NAME_CHARS}",
    what="a Kubernetes label key ([prefix/]name)",
)
LABEL_VALUE = _Text(63, low=0, pattern=_NAME_CHARS, what="a Kubernetes label value")
U63_ = _Int()
DATA = _Bytes()
BOOL = _Bool()
LABELS = _TextMap(LABEL_KEY, LABEL_VALUE, MAX_LABELS)
HEADERS = _TextMap(
    _Text(64, pattern=r"[\x21-\x39\x3b-\x7e]+", what="printable ASCII, no spaces or ':'"),
    _Text(MAX_TEXT, low=0),
    MAX_HEADERS,
)
ANNOTATIONS = _TextMap(LABEL_KEY, _Text(MAX_ANNOTATION, low=0), MAX_LABELS)


# --- node records (discovery) -------------------------------------------------------------


@_fields
@dataclass(frozen=True, kw_only=True, slots=True)
class Metadata(Record):
    """Service metadata, as in Kubernetes objects."""

    namespace: str | None = field(default=None, metadata=_w(WORD))
    kind: str | None = field(default=None, metadata=_w(WORD))
    group: str | None = field(default=None, metadata=_w(WORD))
    api_version: str | None = field(default=None, metadata=_w(WORD))
    annotations: dict[str, str] = field(default_factory=dict, metadata=_w(ANNOTATIONS))


@_fields
@dataclass(frozen=True, kw_only=True, slots=True)
class Host(Record):
    """Where a node runs: same hostname = same machine, and same pid = same process."""

    hostname: str = field(metadata=_w(WORD))
    pid: int = field(metadata=_w(_Int(1, (1 << 31) - 1)))


@_fields
@dataclass(frozen=True, kw_only=True, slots=True)
class NodeRecord(Record):
    """What a node tells discovery about itself; `labels` are matched by selectors."""

    name: str = field(metadata=_w(NAME))
    version: str | None = field(
        default=None,
        metadata=_w(_Text(64, pattern=r"[\x21-\x7e]+", what="printable ASCII, no spaces")),
    )
    labels: dict[str, str] = field(default_factory=dict, metadata=_w(LABELS))
    metadata: Metadata | None = field(default=None, metadata=_w(_Nested(Metadata)))
    host: Host | None = field(default=None, metadata=_w(_Nested(Host)))


@_fields
@dataclass(frozen=True, kw_only=True, slots=True)
class Will(Record):
    """The last-will message the endpoint publishes if the connection ends without close."""

    topic: str = field(metadata=_w(TOPIC))
    data: bytes = field(default=b"", metadata=_w(DATA))
    retain: bool = field(default=False, metadata=_w(BOOL))
    headers: dict[str, str] = field(default_factory=dict, metadata=_w(HEADERS))


# --- the head --------------------------------------------------------------------------------


@_fields
@dataclass(frozen=True, kw_only=True, slots=True)
class Head(Record):
    """Routing: who sent it, for whom; the forward fields are filled by relays (links)."""

    source: str | None = field(default=None, metadata=_w(NAME))
    destination: str | None = field(default=None, metadata=_w(NAME))
    forward_for_source: str | None = field(default=None, metadata=_w(NAME))
    forward_for_connection: int | None = field(default=None, metadata=_w(U63_))
    hops: int = field(default=0, metadata=_w(_Int(0, MAX_HOPS)))


# --- bodies ----------------------------------------------------------------------------------


class Body(Record):
    __slots__ = ()
    KIND: ClassVar[str] = ""


KINDS: dict[str, type[Body]] = {}


def _body(cls: type[Body]) -> type[Body]:
    cls = _fields(cls)  # type: ignore[assignment]
    KINDS[cls.KIND] = cls
    return cls


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Hello(Body):
    """The client's first message: the protocol versions it speaks, its token, its node;
    `link`: the client is another endpoint linking to this one (its node is that
    endpoint's), and both sides may then send every kind but hello and welcome."""

    KIND: ClassVar[str] = "hello"
    versions: tuple[int, ...] = field(
        metadata=_w(_List(_Int(1, 65535), 1, MAX_VERSIONS, unique=True))
    )
    token: str | None = field(
        default=None,
        metadata=_w(_Text(MAX_TOKEN, pattern=r"[\x21-\x7e]+", what="printable ASCII, no spaces")),
    )
    node: NodeRecord | None = field(default=None, metadata=_w(_Nested(NodeRecord)))
    will: Will | None = field(default=None, metadata=_w(_Nested(Will)))
    link: bool = field(default=False, metadata=_w(BOOL))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Welcome(Body):
    """The endpoint's answer to a good hello: the chosen version and the connection's id."""

    KIND: ClassVar[str] = "welcome"
    version: int = field(metadata=_w(_Int(1, 65535)))
    connection: int = field(metadata=_w(U63_))
    max_frame: int = field(metadata=_w(_Int(1, (1 << 32) - 1)))
    node: NodeRecord | None = field(default=None, metadata=_w(_Nested(NodeRecord)))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Ping(Body):
    KIND: ClassVar[str] = "ping"
    seq: int = field(metadata=_w(U63_))
    time_us: int = field(metadata=_w(U63_))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Pong(Body):
    """Echoes the ping's `seq` and `time_us`; RTT = now - time_us on the pinging side."""

    KIND: ClassVar[str] = "pong"
    seq: int = field(metadata=_w(U63_))
    time_us: int = field(metadata=_w(U63_))
    peer_time_us: int | None = field(default=None, metadata=_w(U63_))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Publish(Body):
    KIND: ClassVar[str] = "publish"
    topic: str = field(metadata=_w(TOPIC))
    data: bytes = field(default=b"", metadata=_w(DATA))
    retain: bool = field(default=False, metadata=_w(BOOL))
    headers: dict[str, str] = field(default_factory=dict, metadata=_w(HEADERS))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Subscribe(Body):
    KIND: ClassVar[str] = "subscribe"
    sid: int = field(metadata=_w(U63_))
    pattern: str = field(metadata=_w(TOPIC))
    group: str | None = field(default=None, metadata=_w(GROUP))
    policy: str = field(default="drop", metadata=_w(_Choice(POLICIES)))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Unsubscribe(Body):
    KIND: ClassVar[str] = "unsubscribe"
    sid: int = field(metadata=_w(U63_))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Deliver(Body):
    """A published message handed to subscription `sid`; `gap` messages were dropped for
    this subscription just before this one (policy drop/latest)."""

    KIND: ClassVar[str] = "deliver"
    sid: int = field(metadata=_w(U63_))
    topic: str = field(metadata=_w(TOPIC))
    data: bytes = field(default=b"", metadata=_w(DATA))
    gap: int = field(default=0, metadata=_w(U63_))
    retained: bool = field(default=False, metadata=_w(BOOL))
    headers: dict[str, str] = field(default_factory=dict, metadata=_w(HEADERS))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Request(Body):
    """A call. `timeout_us` is the deadline as time left, so clocks need not agree; `sid`
    is set by the endpoint when it hands the request to a serving subscription."""

    KIND: ClassVar[str] = "request"
    id: int = field(metadata=_w(U63_))
    topic: str = field(metadata=_w(TOPIC))
    timeout_us: int = field(metadata=_w(_Int(1, MAX_TIMEOUT_US)))
    data: bytes = field(default=b"", metadata=_w(DATA))
    sid: int | None = field(default=None, metadata=_w(U63_))
    headers: dict[str, str] = field(default_factory=dict, metadata=_w(HEADERS))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Reply(Body):
    KIND: ClassVar[str] = "reply"
    id: int = field(metadata=_w(U63_))
    status: str = field(default="ok", metadata=_w(_Choice(STATUSES)))
    data: bytes = field(default=b"", metadata=_w(DATA))
    error: str | None = field(default=None, metadata=_w(FREE_TEXT))
    headers: dict[str, str] = field(default_factory=dict, metadata=_w(HEADERS))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Packet(Body):
    """Stream data: `data` holds bytes offset..offset+len(data)-1 of stream `stream_id`."""

    KIND: ClassVar[str] = "packet"
    stream_id: int = field(metadata=_w(U63_))
    offset: int = field(metadata=_w(U63_))
    data: bytes = field(default=b"", metadata=_w(DATA))
    fin: bool = field(default=False, metadata=_w(BOOL))
    time_us: int | None = field(default=None, metadata=_w(U63_))

    def _validate(self) -> None:
        if self.offset + len(self.data) > U63:
            raise InvalidMessage("offset", "bad_value", "offset + len(data) is over 2^63-1")


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Acknowledge(Body):
    """Every byte before `acknowledge_offset` was delivered in order to the receiving
    application (read, not only arrived: so the window pushes back on a slow reader, and a
    receiver that dies loses nothing it had not read); `received_max_offset` is the end of
    the highest byte range that arrived. The sender may have up to acknowledge_offset +
    window; after a reconnect it resends from acknowledge_offset (appliance/bus/flow.py)."""

    KIND: ClassVar[str] = "ack"
    stream_id: int = field(metadata=_w(U63_))
    acknowledge_offset: int = field(metadata=_w(U63_))
    received_max_offset: int = field(metadata=_w(U63_))
    window: int = field(metadata=_w(U63_))
    time_us: int | None = field(default=None, metadata=_w(U63_))

    def _validate(self) -> None:
        if self.received_max_offset < self.acknowledge_offset:
            raise InvalidMessage("received_max_offset", "bad_value", "less than acknowledge_offset")


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class ResetStream(Body):
    """The sender abandons stream `stream_id` (one it sends): no more data will come, and
    what did not arrive is lost. `code` is a close reason naming why."""

    KIND: ClassVar[str] = "reset_stream"
    stream_id: int = field(metadata=_w(U63_))
    code: int = field(metadata=_w(_Int(0, 65535)))
    text: str = field(default="", metadata=_w(FREE_TEXT))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class StopSending(Body):
    """The receiver refuses the rest of stream `stream_id` (one the peer sends): the
    sender stops and forgets it. `code` is a close reason naming why."""

    KIND: ClassVar[str] = "stop_sending"
    stream_id: int = field(metadata=_w(U63_))
    code: int = field(metadata=_w(_Int(0, 65535)))
    text: str = field(default="", metadata=_w(FREE_TEXT))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Close(Body):
    """The last message on a connection: a reason code (`appliance.bus.reasons`) and text."""

    KIND: ClassVar[str] = "close"
    code: int = field(metadata=_w(_Int(0, 65535)))
    text: str = field(default="", metadata=_w(FREE_TEXT))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Register(Body):
    KIND: ClassVar[str] = "register"
    node: NodeRecord = field(metadata=_w(_Nested(NodeRecord)))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Deregister(Body):
    KIND: ClassVar[str] = "deregister"
    name: str = field(metadata=_w(NAME))


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class Query(Body):
    """Find nodes by label selector (`appliance.bus.selectors`); "" matches every node."""

    KIND: ClassVar[str] = "query"
    id: int = field(metadata=_w(U63_))
    selector: str = field(
        default="", metadata=_w(_Text(MAX_SELECTOR, low=0, what="syntax: appliance.bus.selectors"))
    )


@_body
@dataclass(frozen=True, kw_only=True, slots=True)
class QueryResult(Body):
    KIND: ClassVar[str] = "query_result"
    id: int = field(metadata=_w(U63_))
    nodes: tuple[NodeRecord, ...] = field(
        default=(), metadata=_w(_List(_Nested(NodeRecord), 0, MAX_NODES))
    )


# --- the message -------------------------------------------------------------------------------

_HEAD_FIELDS = frozenset(name for name, _, _ in Head._specs)
_NO_HEAD = Head()


@dataclass(frozen=True, slots=True)
class Message:
    body: Body
    head: Head = _NO_HEAD

    def __post_init__(self) -> None:
        if not isinstance(self.body, Body) or type(self.body).KIND not in KINDS:
            raise InvalidMessage("", "bad_type", f"not a message body: {self.body!r}"[:200])
        if not isinstance(self.head, Head):
            raise InvalidMessage("", "bad_type", f"not a head: {self.head!r}"[:200])

    @classmethod
    def trusted(cls, body: Body, head: Head = _NO_HEAD) -> Message:
        """Without the checks: for a body and head the endpoint built itself."""
        message = object.__new__(cls)
        object.__setattr__(message, "body", body)
        object.__setattr__(message, "head", head)
        return message

    @property
    def kind(self) -> str:
        return self.body.KIND

    def to_wire(self) -> dict[str, Any]:
        out = self.head.to_wire() if self.head is not _NO_HEAD else {}
        out[self.body.KIND] = self.body.to_wire()
        return out


def parse(wire: Any) -> Message:
    """A decoded frame body as a `Message`; `MessageError` names what is wrong."""
    try:
        return _parse(wire)
    except InvalidMessage as exc:
        raise MessageError(exc.field, exc.problem, exc.detail) from None


def _parse(wire: Any) -> Message:
    # The hot path: one body kind, only head fields beside it, maps where maps belong;
    # anything else goes through the general path below, which explains it.
    if type(wire) is dict:
        kind = None
        for key in wire:
            if key in KINDS:
                if kind is not None:
                    break
                kind = key
            elif key not in _HEAD_FIELDS:
                break
        else:
            if kind is not None and type(wire[kind]) is dict:
                return _parse_good(wire, kind)
    if not isinstance(wire, dict):
        raise InvalidMessage("", "bad_type", f"a message is a map, not {type(wire).__name__}")
    kinds = [key for key in wire if key in KINDS]
    strays = [key for key in wire if key not in KINDS and key not in _HEAD_FIELDS]
    if strays:
        problem = "unknown_field" if kinds else "unknown_kind"
        raise InvalidMessage(str(strays[0])[:64], problem, "not a head field or a body kind")
    if len(kinds) != 1:
        raise InvalidMessage("", "bad_kind", f"{len(kinds)} body kinds; exactly one is needed")
    kind = kinds[0]
    body_wire = wire[kind]
    if not isinstance(body_wire, dict):
        raise InvalidMessage(kind, "bad_type", f"a body is a map, not {type(body_wire).__name__}")
    body = KINDS[kind].from_wire(body_wire, kind)
    if len(wire) == 1:
        return Message(body)
    head_wire = {key: value for key, value in wire.items() if key != kind}
    head = Head.from_wire(head_wire, "")
    return Message(body, head)


def _parse_good(wire: dict[str, Any], kind: str) -> Message:
    body = KINDS[kind].from_wire(wire[kind], kind)
    if len(wire) == 1:
        return Message(body)
    head = Head.from_wire({key: value for key, value in wire.items() if key != kind}, "")
    return Message(body, head)
