"""What a `Connection` reports after it took bytes in: small frozen values, one per happening.

The endpoint's loop is `events = conn.receive_data(chunk)`, act on each event, then write
`conn.data_to_send()`. Protocol chores (pong, welcome, stream acknowledgements, the close
frame after a violation) are done by the connection itself and only reported.

    Event
    ├── Established        handshake done (both roles)
    ├── PongReceived       an answer to our ping, with the RTT
    ├── Published          server: a permitted publish
    ├── Subscribed         server: a valid, permitted subscription
    ├── Unsubscribed       server: a subscription ended
    ├── Delivered          client: a message for one of our subscriptions
    ├── RequestReceived    a request to route (server) or to serve (client)
    ├── ReplyReceived      the answer to a request we sent (`pending` None: late or unknown)
    ├── RequestTimedOut    `tick` passed the deadline of a request we sent
    ├── StreamData         stream bytes became readable (call `stream_read`)
    ├── StreamAcked        the peer acknowledged stream bytes we sent (more may be writable)
    ├── StreamReset / StreamStopped   the peer abandoned a stream it sends / refused ours
    ├── NodeRegistered / NodeDeregistered / QueryReceived / QueryAnswered   discovery
    ├── FrameDropped       a non-fatal bad frame (a bad checksum) was skipped
    └── Closed             the connection is over; always the last event
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.bus import messages as m
from appliance.bus.flow import SlowConsumer
from appliance.bus.principal import BusPrincipal
from appliance.bus.topics import Pattern

_NO_HEAD = m.Head()


class Event:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Established(Event):
    """Server: the hello was good and the welcome is queued. Client: the welcome arrived.
    `principal` is the authenticated peer (server side only); `node` and `will` are the
    peer's hello fields (server) or the endpoint's node record (client)."""

    version: int
    connection_id: int
    principal: BusPrincipal | None = None
    node: m.NodeRecord | None = None
    will: m.Will | None = None
    link: bool = False  # a link between two endpoints (hello.link)


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    seq: int
    rtt_us: int
    peer_time_us: int | None = None


@dataclass(frozen=True, slots=True)
class Published(Event):
    """`tokens` is the validated topic, split."""

    head: m.Head
    publish: m.Publish
    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Subscribed(Event):
    sid: int
    pattern: Pattern
    group: str | None
    policy: SlowConsumer


@dataclass(frozen=True, slots=True)
class Unsubscribed(Event):
    sid: int


@dataclass(frozen=True, slots=True)
class Delivered(Event):
    head: m.Head
    deliver: m.Deliver


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """`deadline_us` is the receiver's clock reading when the caller stops waiting."""

    head: m.Head
    request: m.Request
    deadline_us: int


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A request this side sent and still waits for."""

    id: int
    topic: str
    sent_us: int
    deadline_us: int


@dataclass(frozen=True, slots=True)
class ReplyReceived(Event):
    """`pending` is the request it answers, or None for a reply that came after the
    deadline (or names an id we never used); the reply is reported either way."""

    head: m.Head
    reply: m.Reply
    pending: PendingRequest | None


@dataclass(frozen=True, slots=True)
class RequestTimedOut(Event):
    pending: PendingRequest


@dataclass(frozen=True, slots=True)
class StreamData(Event):
    """`readable` bytes of stream `stream_id` wait in order; `fin`: the stream's end has
    arrived (everything readable now is the rest of it)."""

    stream_id: int
    readable: int
    fin: bool
    head: m.Head = _NO_HEAD  # the head of the stream's first packet on this connection
    start_offset: int = 0  # where the stream started on this connection (>0: resumed)


@dataclass(frozen=True, slots=True)
class StreamAcked(Event):
    """Our stream `stream_id` had `released` bytes acknowledged; `done`: finished, every
    byte acknowledged and the stream forgotten."""

    stream_id: int
    released: int
    done: bool


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """The peer abandoned stream `stream_id` that it was sending us (`reset_stream`); what
    is readable can still be read, nothing more comes."""

    stream_id: int
    code: int
    reason: str
    text: str


@dataclass(frozen=True, slots=True)
class StreamStopped(Event):
    """The peer refused the rest of our stream `stream_id` (`stop_sending`); it is
    forgotten, and writes to it fail."""

    stream_id: int
    code: int
    reason: str
    text: str


@dataclass(frozen=True, slots=True)
class NodeRegistered(Event):
    node: m.NodeRecord


@dataclass(frozen=True, slots=True)
class NodeDeregistered(Event):
    name: str


@dataclass(frozen=True, slots=True)
class QueryReceived(Event):
    query: m.Query


@dataclass(frozen=True, slots=True)
class QueryAnswered(Event):
    result: m.QueryResult


@dataclass(frozen=True, slots=True)
class FrameDropped(Event):
    """A frame was skipped and decoding goes on (a bad checksum below the limit)."""

    reason: str
    text: str


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """The connection is over: no more events, and `send` refuses.

    `by_peer`: the peer sent `close` (or hung up); otherwise this side closed, on purpose
    (`close()`) or for the peer's violation, and a close frame is queued. `clean`: a close
    frame ended it (sent or received); False when the byte stream just ended. The last
    will is due unless the peer itself closed cleanly (`will_due`), as in MQTT.
    """

    code: int
    reason: str
    text: str
    by_peer: bool
    clean: bool = True

    @property
    def will_due(self) -> bool:
        return not (self.by_peer and self.clean)
