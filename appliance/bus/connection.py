"""One bus connection's protocol state machine, sans-IO: bytes in, events out, bytes out.

    conn = Connection("server", authenticate=auth, clock=clock_us, connection_id=17)
    events = conn.receive_data(chunk)     # b"" when the peer hung up
    ...act on events (route publishes, answer requests, read streams)...
    sock.send_all(conn.data_to_send())    # welcome, pongs, acks, close, ...

`send(message)` queues one message and returns everything queued so far, in order (so
the automatic replies `receive_data` queued go out before it). `tick(now_us)` reports
requests whose deadline passed. The clock is injected: a function returning microseconds
(any epoch); the connection never sleeps and never reads a socket.

**States** (the table below is the whole machine; `docs/bus-protocol.md` §4 draws it):

    HELLO        server: awaiting the hello; client: hello sent or to send, awaiting welcome
    ESTABLISHED  the welcome was sent (server) or received (client)
    CLOSING      we sent close; waiting for the peer's close or the end of the stream
    CLOSED       over: `Closed` was the last event, `send` refuses, input is ignored

Every refusal of the peer's input closes the connection with a precise reason from
`appliance.bus.reasons` (the close frame is queued, `Closed(by_peer=False)` reported),
except two that are answered and let the connection carry on: a bad checksum below the
codec's limit (`FrameDropped`) and a request to a topic the token may not publish to (a
`reply` with status `error`, text `forbidden: ...`). Misuse on this side (sending a kind
the role may not send, sending after close) raises `LocalProtocolError`.

Longer than our 400-line aim because it is one table read as code: the state and direction
tables at the top and one short handler per message kind; the books it keeps are
elsewhere (`streams` for streams, `router` for who gets what, `principal` for permissions).
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable
from typing import Literal

from appliance.bus import messages as m
from appliance.bus.codec import (
    DEFAULT_MAX_BAD_CRC,
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    FrameDecoder,
    choose_version,
    encode_frame,
)
from appliance.bus.events import (
    Closed,
    Delivered,
    Established,
    Event,
    FrameDropped,
    NodeDeregistered,
    NodeRegistered,
    PendingRequest,
    PongReceived,
    Published,
    QueryAnswered,
    QueryReceived,
    ReplyReceived,
    RequestReceived,
    RequestTimedOut,
    Subscribed,
    Unsubscribed,
)
from appliance.bus.flow import FlowError, SlowConsumer, StreamReceiver, StreamSender
from appliance.bus.principal import Authenticate, BusPrincipal
from appliance.bus.reasons import BY_CODE, FrameError, LocalProtocolError, MessageError, reason_for
from appliance.bus.streams import Streams
from appliance.bus.topics import TopicError, parse_pattern, split_topic

Role = Literal["server", "client"]
Clock = Callable[[], int]
HELLO_VERSION = PROTOCOL_VERSION  # hello and welcome are always version 1 frames
MAX_OUTSTANDING_PINGS = 16
MAX_REMEMBERED_TOPICS = 1024
# The queue-group syntax of appliance.bus.topics (SubscriptionIndex.add checks the same).
_GROUP = re.compile(r"[A-Za-z0-9_:\-.]{1,64}")


class State(enum.Enum):
    HELLO = "hello"
    ESTABLISHED = "established"
    CLOSING = "closing"
    CLOSED = "closed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.HELLO: frozenset({State.ESTABLISHED, State.CLOSING, State.CLOSED}),
    State.ESTABLISHED: frozenset({State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}

# What each role may receive once established; it sends the other role's set.
_BOTH = frozenset(
    {"ping", "pong", "request", "reply", "packet", "ack", "reset_stream", "stop_sending", "close"}
)
RECEIVES: dict[str, frozenset[str]] = {
    "server": _BOTH | {"publish", "subscribe", "unsubscribe", "register", "deregister", "query"},
    "client": _BOTH | {"deliver", "query_result"},
}
SENDS: dict[str, frozenset[str]] = {
    "server": RECEIVES["client"] | {"welcome"},
    "client": RECEIVES["server"] | {"hello"},
}
# A link between two endpoints: each side subscribes, delivers, publishes and queries.
LINK_KINDS = RECEIVES["server"] | RECEIVES["client"]
LINK_ROLES = frozenset({"admin", "operator"})  # tokens that may link an endpoint


def _monotonic_us() -> int:
    return time.monotonic_ns() // 1000


def _clip(text: str, limit: int = m.MAX_TEXT) -> str:
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")


class Connection:
    """The protocol for one connection, as `role` "server" (the endpoint's side) or
    "client". A server needs `authenticate`; `node` is this side's node record (the
    endpoint's goes in the welcome). `versions`: the protocol versions this side speaks.
    `stream_window`: the window this side grants for streams it receives, and the window
    its own streams start with until the first acknowledgement says otherwise."""

    def __init__(
        self,
        role: Role,
        *,
        authenticate: Authenticate | None = None,
        clock: Clock = _monotonic_us,
        connection_id: int = 0,
        node: m.NodeRecord | None = None,
        versions: frozenset[int] = SUPPORTED_VERSIONS,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_bad_crc: int = DEFAULT_MAX_BAD_CRC,
        stream_window: int = 1 << 16,
        max_packet: int = 16384,
        max_subscriptions: int = 1024,
        max_pending_requests: int = 1024,
        max_streams: int = 256,
        manual_release: bool = False,
    ) -> None:
        if role not in ("server", "client"):
            raise LocalProtocolError(f"role is 'server' or 'client', not {role!r}")
        if role == "server" and authenticate is None:
            raise LocalProtocolError("a server connection needs authenticate")
        self.role: Role = role
        self._authenticate = authenticate
        self._clock = clock
        self.connection_id = connection_id
        self.node = node
        self.versions = frozenset(versions)
        self.max_frame = max_frame
        self.stream_window = stream_window
        self.max_packet = max_packet
        self.max_subscriptions = max_subscriptions
        self.max_pending_requests = max_pending_requests
        self.max_streams = max_streams
        self._decoder = FrameDecoder(
            max_frame, versions=frozenset({HELLO_VERSION}), max_bad_crc=max_bad_crc
        )
        self._state = State.HELLO
        self.version: int | None = None  # negotiated
        self.principal: BusPrincipal | None = None  # server: the authenticated peer
        self.peer_node: m.NodeRecord | None = None
        self.link = False  # established as a link between endpoints (hello.link)
        self.peer_max_frame = max_frame
        self._offered: frozenset[int] = frozenset()  # client: the hello's versions
        self._link_offered = False  # client: the hello asked for a link
        self._outbox: list[bytes] = []
        self._close_sent: m.Close | None = None
        self._next_ping = 0
        self._pings: dict[int, int] = {}  # seq -> sent at
        self._pending: dict[int, PendingRequest] = {}  # requests we sent
        self._inbound: dict[int, int] = {}  # requests we received: id -> deadline
        self._sids: set[int] = set()  # server: the peer's subscriptions
        # Topics this peer published and may publish to (its permissions never change).
        self._may_publish: dict[str, tuple[str, ...]] = {}
        self._streams = Streams(
            window=stream_window, max_streams=max_streams, manual_release=manual_release
        )
        self.last_received_us: int | None = None

    # --- state -----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def _to(self, new: State) -> None:
        if new not in TRANSITIONS[self._state]:
            raise LocalProtocolError(f"no transition {self._state.value} -> {new.value}")
        self._state = new

    @property
    def pending_requests(self) -> dict[int, PendingRequest]:
        return dict(self._pending)

    @property
    def next_deadline(self) -> int | None:
        """When `tick` next has something to report (microseconds), or None."""
        return min((p.deadline_us for p in self._pending.values()), default=None)

    # --- output ----------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued since the last call (possibly b"")."""
        out, self._outbox = b"".join(self._outbox), []
        return out

    @property
    def has_data_to_send(self) -> bool:
        """Whether `data_to_send` would return bytes (a check that takes none)."""
        return bool(self._outbox)

    def _queue(self, body: m.Body, head: m.Head | None = None) -> None:
        message = m.Message(body, head) if head is not None else m.Message(body)
        version = self.version if self.version is not None else HELLO_VERSION
        if body.KIND in ("hello", "welcome"):
            version = HELLO_VERSION
        self._outbox.append(encode_frame(message.to_wire(), version, max_frame=self.peer_max_frame))

    def send(self, message: m.Message | m.Body) -> bytes:
        """Queue one message and return every byte queued so far. Streams go through
        `stream_write`/`stream_read`, closing through `close`, the welcome is automatic."""
        if isinstance(message, m.Body):
            message = m.Message(message)
        kind = message.kind
        if self._state in (State.CLOSING, State.CLOSED):
            raise LocalProtocolError(f"send({kind}) after close")
        if kind not in SENDS[self.role] and not (self.link and kind in LINK_KINDS):
            raise LocalProtocolError(f"a {self.role} does not send {kind}")
        if kind in ("welcome", "close", "packet", "ack", "reset_stream", "stop_sending"):
            raise LocalProtocolError(f"{kind} is sent by the connection itself")
        if self._state is State.HELLO and kind != "hello":
            raise LocalProtocolError(f"send({kind}) before the welcome")
        if kind == "hello" and (self._state is not State.HELLO or self._offered):
            raise LocalProtocolError("hello is sent once, first")
        now = self._clock()
        body = message.body
        if isinstance(body, m.Hello):
            self._offered = frozenset(body.versions)
            self._link_offered = body.link
        elif isinstance(body, m.Ping):
            if len(self._pings) >= MAX_OUTSTANDING_PINGS:
                self._pings.pop(next(iter(self._pings)))
            self._pings[body.seq] = body.time_us
        elif isinstance(body, m.Request):
            if body.id in self._pending:
                raise LocalProtocolError(f"request {body.id} is already pending")
            if len(self._pending) >= self.max_pending_requests:
                raise LocalProtocolError(f"{len(self._pending)} requests already pending")
            self._pending[body.id] = PendingRequest(body.id, body.topic, now, now + body.timeout_us)
        elif isinstance(body, m.Reply):
            self._inbound.pop(body.id, None)
        self._queue(body, message.head)
        return self.data_to_send()

    def send_deliver(self, deliver: m.Deliver, head: m.Head) -> bytes:
        """`send(Message(deliver, head))` for a deliver the endpoint built from a checked
        publish: the same bytes, without the checks a caller's message needs."""
        if self._state is not State.ESTABLISHED:
            raise LocalProtocolError(f"send(deliver) in state {self._state.value}")
        if "deliver" not in SENDS[self.role] and not (self.link and "deliver" in LINK_KINDS):
            raise LocalProtocolError(f"a {self.role} does not send deliver")
        wire = head.to_wire()
        wire["deliver"] = deliver.to_wire()
        frame = encode_frame(wire, self.version or HELLO_VERSION, max_frame=self.peer_max_frame)
        if self._outbox:
            self._outbox.append(frame)
            return self.data_to_send()
        return frame

    def hello(
        self,
        token: str | None = None,
        *,
        node: m.NodeRecord | None = None,
        will: m.Will | None = None,
        link: bool = False,
    ) -> bytes:
        """Client: send the hello, offering every version in `versions`; `link` when this
        side is an endpoint linking to another (then `node` is this endpoint's)."""
        versions = tuple(sorted(self.versions, reverse=True))
        return self.send(m.Hello(versions=versions, token=token, node=node, will=will, link=link))

    def ping(self) -> bytes:
        """Send a ping stamped with the clock; the pong reports the RTT."""
        seq, self._next_ping = self._next_ping, self._next_ping + 1
        return self.send(m.Ping(seq=seq, time_us=self._clock()))

    def close(self, reason: str = "normal", text: str = "") -> bytes:
        """Send close and stop sending; `Closed` comes when the peer closes or hangs up.
        Returns b"" if already closing or closed."""
        if self._state in (State.CLOSING, State.CLOSED):
            return b""
        self._close_sent = m.Close(code=reason_for(reason).code, text=_clip(text))
        self._queue(self._close_sent)
        self._to(State.CLOSING)
        return self.data_to_send()

    # --- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Take bytes from the peer (b"": it hung up) and report what they meant."""
        events: list[Event] = []
        if self._state is State.CLOSED:
            return events
        if not data:
            self._eof(events)
            return events
        heard = False
        for item in self._decoder.feed(data):
            if self._state is State.CLOSED:
                break
            if isinstance(item, FrameError):
                if item.fatal or item.code != "bad_crc":
                    self._violation(item.code, item.detail, events)
                else:
                    events.append(FrameDropped(item.code, item.detail))
                continue
            expected = self.version if self.version is not None else HELLO_VERSION
            if item.version != expected:
                self._violation(
                    "bad_version", f"frame version {item.version}, not {expected}", events
                )
                continue
            try:
                message = m.parse(item.body)
            except MessageError as exc:
                self._violation("bad_message", str(exc), events)
                continue
            heard = True
            self._handle(message, events)
        if heard:  # the frames of one chunk arrived together: one clock reading
            self.last_received_us = self._clock()
        return events

    def tick(self, now_us: int | None = None) -> list[Event]:
        """Report requests we sent whose deadline is past (and forget them); forget
        requests we were sent whose caller has stopped waiting."""
        now = self._clock() if now_us is None else now_us
        events: list[Event] = []
        for pending in list(self._pending.values()):
            if pending.deadline_us <= now:
                del self._pending[pending.id]
                events.append(RequestTimedOut(pending))
        for rid, deadline in list(self._inbound.items()):
            if deadline <= now:
                del self._inbound[rid]
        return events

    def _eof(self, events: list[Event]) -> None:
        if self._state is State.CLOSING and self._close_sent is not None:
            close = self._close_sent
            self._to(State.CLOSED)
            events.append(Closed(close.code, _name(close.code), close.text, False, True))
            return
        error = self._decoder.eof() if self._decoder.failed is None else None
        reason, text = ("truncated", error.detail) if error else ("going_away", "hung up")
        self._to(State.CLOSED)
        events.append(Closed(reason_for(reason).code, reason, text, True, False))

    def _violation(self, reason: str, text: str, events: list[Event] | None = None) -> None:
        """Close for the peer's fault: queue the close frame, report `Closed`."""
        close = m.Close(code=reason_for(reason).code, text=_clip(text))
        if self._state is not State.CLOSING:
            self._queue(close)
        self._close_sent = close
        self._to(State.CLOSED)
        if events is not None:
            events.append(self._closed_event())

    def _closed_event(self) -> Closed:
        assert self._close_sent is not None
        close = self._close_sent
        return Closed(close.code, _name(close.code), close.text, False, True)

    def _handle(self, message: m.Message, events: list[Event]) -> None:
        body, kind = message.body, message.kind
        if isinstance(body, m.Close):
            self._to(State.CLOSED)
            events.append(Closed(body.code, _name(body.code), body.text, True, True))
            return
        if self._state is State.CLOSING:
            return  # we said goodbye; what was in flight is dropped
        if self._state is State.HELLO:
            if self.role == "server":
                if isinstance(body, m.Hello):
                    self._on_hello(message.head, body, events)
                else:
                    self._violation("hello_required", f"{kind} before hello", events)
            elif isinstance(body, m.Welcome) and self._offered:
                self._on_welcome(body, events)
            else:
                self._violation("unexpected_message", f"{kind} before the welcome", events)
            return
        if kind not in RECEIVES[self.role] and not (self.link and kind in LINK_KINDS):
            self._violation("unexpected_message", f"a {self.role} does not take {kind}", events)
            return
        handler = getattr(self, f"_on_{kind}")
        handler(message.head, body, events)

    # --- handshake -------------------------------------------------------------------------

    def _on_hello(self, head: m.Head, hello: m.Hello, events: list[Event]) -> None:
        version = choose_version(hello.versions, self.versions)
        if version is None:
            self._violation(
                "no_common_version",
                f"offered {sorted(hello.versions)}; this endpoint speaks {sorted(self.versions)}",
                events,
            )
            return
        assert self._authenticate is not None
        principal = self._authenticate(hello.token)
        if principal is None:
            why = "no token" if hello.token is None else "token refused"
            self._violation("unauthenticated", why, events)
            return
        if hello.link and (hello.node is None or principal.role not in LINK_ROLES):
            why = (
                "a link names its endpoint's node"
                if hello.node is None
                else (f"a {principal.role} token may not link an endpoint")
            )
            self._violation("link_refused" if hello.node is None else "forbidden", why, events)
            return
        if hello.link and self.node is not None and hello.node.name == self.node.name:
            self._violation("link_refused", f"{self.node.name} would link to itself", events)
            return
        self.principal, self.peer_node, self.link = principal, hello.node, hello.link
        welcome = m.Welcome(
            version=version,
            connection=self.connection_id,
            max_frame=self.max_frame,
            node=self.node,
        )
        reply_head = m.Head(
            source=self.node.name if self.node else None,
            destination=hello.node.name if hello.node else None,
        )
        self._queue(welcome, reply_head)
        self._establish(version)
        events.append(
            Established(version, self.connection_id, principal, hello.node, hello.will, hello.link)
        )

    def _on_welcome(self, welcome: m.Welcome, events: list[Event]) -> None:
        if welcome.version not in self._offered:
            self._violation(
                "no_common_version", f"welcome chose {welcome.version}, not offered", events
            )
            return
        self.connection_id = welcome.connection
        self.peer_max_frame = welcome.max_frame
        self.peer_node = welcome.node
        if self._link_offered:  # we dialed another endpoint: it is trusted like ourselves
            name = welcome.node.name if welcome.node else "endpoint"
            self.principal = BusPrincipal.for_role(f"link:{name}", "admin")
            self.link = True
        self._establish(welcome.version)
        events.append(
            Established(
                welcome.version, welcome.connection, self.principal, welcome.node, None, self.link
            )
        )

    def _establish(self, version: int) -> None:
        self.version = version
        self._decoder.versions = frozenset({version})
        self._to(State.ESTABLISHED)

    # --- established: one handler per kind --------------------------------------------------

    def _on_ping(self, head: m.Head, ping: m.Ping, events: list[Event]) -> None:
        self._queue(m.Pong(seq=ping.seq, time_us=ping.time_us, peer_time_us=self._clock()))

    def _on_pong(self, head: m.Head, pong: m.Pong, events: list[Event]) -> None:
        sent = self._pings.get(pong.seq)
        if sent is None or sent != pong.time_us:
            return  # not an answer to a ping of ours (or a stale one): nothing to measure
        del self._pings[pong.seq]
        rtt = max(0, self._clock() - sent)
        events.append(PongReceived(pong.seq, rtt, pong.peer_time_us))

    def _on_publish(self, head: m.Head, publish: m.Publish, events: list[Event]) -> None:
        tokens = self._may_publish.get(publish.topic)
        if tokens is None:
            try:
                tokens = split_topic(publish.topic)
            except TopicError as exc:
                self._violation("bad_message", f"publish.topic: {exc.code}: {exc.message}", events)
                return
            assert self.principal is not None
            if not self.principal.permissions.may_publish(tokens):
                self._violation("forbidden", f"publish to {publish.topic} is not allowed", events)
                return
            if len(self._may_publish) >= MAX_REMEMBERED_TOPICS:
                self._may_publish.clear()
            self._may_publish[publish.topic] = tokens
        events.append(Published(head, publish, tokens))

    def _on_subscribe(self, head: m.Head, sub: m.Subscribe, events: list[Event]) -> None:
        try:
            pattern = parse_pattern(sub.pattern)
        except TopicError as exc:
            self._violation("bad_message", f"subscribe.pattern: {exc.code}: {exc.message}", events)
            return
        if sub.group is not None and not _GROUP.fullmatch(sub.group):
            self._violation("bad_message", "subscribe.group: 1-64 of A-Z a-z 0-9 _ - : .", events)
            return
        if sub.sid in self._sids:
            self._violation("bad_message", f"subscribe.sid: {sub.sid} already exists", events)
            return
        if len(self._sids) >= self.max_subscriptions:
            self._violation(
                "limit_exceeded", f"at most {self.max_subscriptions} subscriptions", events
            )
            return
        assert self.principal is not None
        if not self.principal.permissions.may_subscribe(pattern):
            self._violation("forbidden", f"subscribe to {sub.pattern} is not allowed", events)
            return
        self._sids.add(sub.sid)
        events.append(Subscribed(sub.sid, pattern, sub.group, SlowConsumer(sub.policy)))

    def _on_unsubscribe(self, head: m.Head, unsub: m.Unsubscribe, events: list[Event]) -> None:
        if unsub.sid in self._sids:  # an unknown sid: already gone, nothing to do
            self._sids.discard(unsub.sid)
            events.append(Unsubscribed(unsub.sid))

    def _on_deliver(self, head: m.Head, deliver: m.Deliver, events: list[Event]) -> None:
        events.append(Delivered(head, deliver))

    def _on_request(self, head: m.Head, request: m.Request, events: list[Event]) -> None:
        try:
            tokens = split_topic(request.topic)
        except TopicError as exc:
            self._violation("bad_message", f"request.topic: {exc.code}: {exc.message}", events)
            return
        if request.id in self._inbound:
            self._violation("bad_message", f"request.id: {request.id} is already pending", events)
            return
        if len(self._inbound) >= self.max_pending_requests:
            self._violation(
                "limit_exceeded", f"at most {self.max_pending_requests} pending requests", events
            )
            return
        if self.principal is not None and not self.principal.permissions.may_publish(tokens):
            text = f"forbidden: request to {request.topic} is not allowed"
            self._queue(m.Reply(id=request.id, status="error", error=text))
            return
        deadline = self._clock() + request.timeout_us
        self._inbound[request.id] = deadline
        events.append(RequestReceived(head, request, deadline))

    def _on_reply(self, head: m.Head, reply: m.Reply, events: list[Event]) -> None:
        events.append(ReplyReceived(head, reply, self._pending.pop(reply.id, None)))

    def _on_register(self, head: m.Head, body: m.Register, events: list[Event]) -> None:
        events.append(NodeRegistered(body.node))

    def _on_deregister(self, head: m.Head, body: m.Deregister, events: list[Event]) -> None:
        events.append(NodeDeregistered(body.name))

    def _on_query(self, head: m.Head, body: m.Query, events: list[Event]) -> None:
        events.append(QueryReceived(body))

    def _on_query_result(self, head: m.Head, body: m.QueryResult, events: list[Event]) -> None:
        events.append(QueryAnswered(body))

    # --- streams (appliance.bus.streams keeps the books) ------------------------------------

    def open_stream(
        self, stream_id: int, *, buffer_limit: int | None = None, head: m.Head | None = None
    ) -> None:
        """Start sending stream `stream_id` (numbered by the sender, unique among its
        open streams on this connection; the peer's streams are numbered apart). Every
        packet carries `head` (e.g. the `destination` node the endpoint relays it to)."""
        self._require_established("open_stream")
        self._streams.open(
            stream_id, max_packet=self._max_packet(), buffer_limit=buffer_limit, head=head
        )

    def attach_stream(
        self, stream_id: int, sender: StreamSender, head: m.Head | None = None
    ) -> None:
        """Send `sender`, a stream kept across connections, from its acknowledged offset
        on (the endpoint's relays resume this way on a receiver's new connection)."""
        self._require_established("attach_stream")
        sender.max_packet = min(sender.max_packet, self._max_packet())
        sender.rewind()
        self._streams.attach(stream_id, sender, head)
        self.stream_flush(stream_id)

    def stream_flush(self, stream_id: int) -> None:
        """Queue what an attached stream's window allows now (after writing to it)."""
        for body, head in self._streams.packets(stream_id, self._clock()):
            self._queue(body, head)

    def _max_packet(self) -> int:
        return max(1, min(self.max_packet, self.peer_max_frame - 256))

    def stream_write(self, stream_id: int, data: bytes, *, fin: bool = False) -> int:
        """Buffer what fits of `data` and queue the packets the window allows; returns how
        many bytes were taken (fewer than len(data): wait for `StreamAcked`). `fin` ends
        the stream once all of `data` is taken."""
        self._require_established("stream_write")
        taken, packets = self._streams.write(stream_id, data, fin=fin, now_us=self._clock())
        for body, head in packets:
            self._queue(body, head)
        return taken

    def stream_writable(self, stream_id: int) -> int:
        return self._streams.sender(stream_id).writable

    def stream_sending(self, stream_id: int) -> bool:
        """Is `stream_id` a stream this side sends (open, not yet done)?"""
        return self._streams.sending(stream_id)

    def stream_receiving(self, stream_id: int) -> StreamReceiver | None:
        """The receiving end of a stream the peer sends, while it is not fully read."""
        return self._streams.receiving(stream_id)

    def stream_read(self, stream_id: int, max_bytes: int | None = None) -> bytes:
        """Take readable bytes of a stream the peer sends; this is what acknowledges them
        (an ack is queued when due), or, with `manual_release`, `stream_release` is."""
        data, ack = self._streams.read(stream_id, max_bytes)
        self._queue_ack(ack)
        return data

    def stream_release(self, stream_id: int, offset: int) -> None:
        """`manual_release`: every byte of the stream before `offset` is done with."""
        self._queue_ack(self._streams.release(stream_id, offset))

    def stream_reset(self, stream_id: int, reason: str = "normal", text: str = "") -> None:
        """Abandon a stream we send (`reset_stream` to the peer)."""
        self._queue_control(self._streams.reset(stream_id, reason, _clip(text)))

    def stream_stop(self, stream_id: int, reason: str = "normal", text: str = "") -> None:
        """Refuse the rest of a stream the peer sends (`stop_sending` to the peer)."""
        self._queue_control(self._streams.stop(stream_id, reason, _clip(text)))

    def _queue_ack(self, ack: m.Acknowledge | None) -> None:
        if ack is not None and self._state is State.ESTABLISHED:
            self._queue(ack)

    def _queue_control(self, out: tuple[m.Body, m.Head] | None) -> None:
        if out is not None and self._state is State.ESTABLISHED:
            self._queue(*out)

    def _require_established(self, what: str) -> None:
        if self._state is not State.ESTABLISHED:
            raise LocalProtocolError(f"{what} in state {self._state.value}")

    def _on_packet(self, head: m.Head, packet: m.Packet, events: list[Event]) -> None:
        try:
            event, ack = self._streams.on_packet(packet, head)
        except FlowError as exc:
            self._violation(exc.code, f"stream {packet.stream_id}: {exc}", events)
            return
        if event is not None:
            events.append(event)
        if ack is not None:
            self._queue(ack)

    def _on_ack(self, head: m.Head, ack: m.Acknowledge, events: list[Event]) -> None:
        try:
            event, packets = self._streams.on_ack(ack, self._clock())
        except FlowError as exc:
            self._violation(exc.code, f"stream {ack.stream_id}: {exc}", events)
            return
        for body, packet_head in packets:
            self._queue(body, packet_head)
        if event is not None:
            events.append(event)

    def _on_reset_stream(self, head: m.Head, reset: m.ResetStream, events: list[Event]) -> None:
        event = self._streams.on_reset(reset)
        if event is not None:
            events.append(event)

    def _on_stop_sending(self, head: m.Head, stop: m.StopSending, events: list[Event]) -> None:
        event = self._streams.on_stop_sending(stop)
        if event is not None:
            events.append(event)


def _name(code: int) -> str:
    reason = BY_CODE.get(code)
    return reason.name if reason else "unknown"
