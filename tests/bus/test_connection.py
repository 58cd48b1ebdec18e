"""The connection state machine, back to back: a client and a server `Connection` wired
through bytes in memory, a fake microsecond clock, no sockets and no mocks."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.bus import messages as m
from appliance.bus.codec import FrameDecoder, encode_frame
from appliance.bus.connection import TRANSITIONS, Connection, State
from appliance.bus.events import (
    Closed,
    Delivered,
    Established,
    Event,
    FrameDropped,
    PongReceived,
    Published,
    ReplyReceived,
    RequestReceived,
    RequestTimedOut,
    StreamAcked,
    StreamData,
    Subscribed,
    Unsubscribed,
)
from appliance.bus.flow import SlowConsumer
from appliance.bus.principal import BusPrincipal
from appliance.bus.reasons import LocalProtocolError, reason_for
from appliance.bus.topics import parse_pattern

TOKENS = {
    "apl_op_secret": BusPrincipal.for_role("ops", "operator"),
    "apl_view_secret": BusPrincipal.for_role("watcher", "viewer"),
    "apl_plant_secret": BusPrincipal.with_patterns("plant", "operator", ["plant.>"], ["plant.>"]),
}


class Clock:
    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def server(clock: Clock, **options: object) -> Connection:
    return Connection(
        "server",
        authenticate=TOKENS.get,
        clock=clock,
        connection_id=17,
        node=m.NodeRecord(name="edge-01"),
        **options,  # type: ignore[arg-type]
    )


class Pair:
    """A client and a server joined by their bytes; `pump` moves bytes until both are quiet
    and collects each side's events."""

    def __init__(
        self,
        clock: Clock | None = None,
        client_options: dict[str, object] | None = None,
        **server_options: object,
    ) -> None:
        self.clock = clock or Clock()
        self.client = Connection("client", clock=self.clock, **(client_options or {}))  # type: ignore[arg-type]
        self.server = server(self.clock, **server_options)
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []

    def pump(self, from_client: bytes = b"", from_server: bytes = b"") -> None:
        while True:
            from_client += self.client.data_to_send()
            from_server += self.server.data_to_send()
            if not from_client and not from_server:
                return
            if from_client:
                self.server_events += self.server.receive_data(from_client)
            if from_server:
                self.client_events += self.client.receive_data(from_server)
            from_client = from_server = b""

    def connect(self, token: str = "apl_op_secret") -> Pair:
        self.pump(self.client.hello(token, node=m.NodeRecord(name="sensor-1")))
        assert self.client.state is State.ESTABLISHED
        assert self.server.state is State.ESTABLISHED
        self.client_events.clear()
        self.server_events.clear()
        return self

    def take(self, side: str) -> list[Event]:
        events = self.client_events if side == "client" else self.server_events
        out = list(events)
        events.clear()
        return out


def closed(events: list[Event]) -> Closed:
    assert events and isinstance(events[-1], Closed), events
    return events[-1]


def peer_close(data: bytes) -> m.Close:
    """The close frame a side queued, decoded by a fresh client."""
    probe = Connection("client")
    probe.hello()
    probe.data_to_send()
    event = closed(probe.receive_data(data))
    return m.Close(code=event.code, text=event.text)


# --- handshake -------------------------------------------------------------------------------


def test_state_table_has_every_state_and_closed_is_final() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.CLOSED] == frozenset()


def test_handshake() -> None:
    pair = Pair()
    pair.pump(pair.client.hello("apl_op_secret", node=m.NodeRecord(name="sensor-1")))
    [server_event] = pair.take("server")
    assert isinstance(server_event, Established)
    assert server_event.version == 1 and server_event.connection_id == 17
    assert server_event.principal == TOKENS["apl_op_secret"]
    assert server_event.node == m.NodeRecord(name="sensor-1")
    [client_event] = pair.take("client")
    assert client_event == Established(1, 17, None, m.NodeRecord(name="edge-01"))
    assert pair.client.connection_id == 17
    assert pair.client.peer_max_frame == pair.server.max_frame


@pytest.mark.parametrize("token", ["apl_wrong", None])
def test_bad_or_missing_token_closes_unauthenticated(token: str | None) -> None:
    pair = Pair()
    pair.pump(pair.client.hello(token))
    event = closed(pair.take("server"))
    assert (event.reason, event.by_peer) == ("unauthenticated", False)
    assert pair.server.state is State.CLOSED
    got = closed(pair.take("client"))
    assert (got.code, got.reason, got.by_peer, got.clean) == (31, "unauthenticated", True, True)
    assert pair.client.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        pair.client.send(m.Ping(seq=1, time_us=1))


def test_message_before_hello_closes_hello_required() -> None:
    conn = server(Clock())
    events = conn.receive_data(encode_frame(m.Message(m.Ping(seq=1, time_us=2)).to_wire()))
    assert closed(events).reason == "hello_required"
    assert peer_close(conn.data_to_send()).code == reason_for("hello_required").code
    assert conn.receive_data(b"anything") == []  # closed: input is ignored


def test_no_common_version() -> None:
    conn = server(Clock())
    hello = m.Hello(versions=(2, 3), token="apl_op_secret")
    event = closed(conn.receive_data(encode_frame(m.Message(hello).to_wire())))
    assert event.reason == "no_common_version" and "[2, 3]" in event.text


def test_version_negotiation_picks_the_highest_common() -> None:
    clock = Clock()
    client = Connection("client", clock=clock, versions=frozenset({1, 2, 3}))
    srv = server(clock, versions=frozenset({1, 2}))
    events = srv.receive_data(client.hello("apl_op_secret"))
    assert isinstance(events[0], Established) and events[0].version == 2
    [welcome] = client.receive_data(srv.data_to_send())
    assert isinstance(welcome, Established) and welcome.version == 2
    ping = client.ping()
    assert ping[0] == 2  # later frames are written in the chosen version
    assert srv.receive_data(ping) == []
    # A frame in version 1 after choosing 2 is refused.
    stale = encode_frame(m.Message(m.Ping(seq=9, time_us=1)).to_wire(), 1)
    assert closed(srv.receive_data(stale)).reason == "bad_version"


def test_second_hello_is_unexpected() -> None:
    pair = Pair().connect()
    frame = encode_frame(m.Message(m.Hello(versions=(1,))).to_wire())
    pair.pump(frame)
    assert closed(pair.take("server")).reason == "unexpected_message"


def test_local_misuse_raises() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError):
        pair.client.send(m.Ping(seq=1, time_us=1))  # before the welcome
    pair.connect()
    with pytest.raises(LocalProtocolError):
        pair.client.send(m.Deliver(sid=1, topic="a"))  # a server's message
    with pytest.raises(LocalProtocolError):
        pair.server.send(m.Publish(topic="a"))
    with pytest.raises(LocalProtocolError):
        pair.client.send(m.Close(code=0))  # use close()


# --- ping, close, bad bytes ------------------------------------------------------------------


def test_ping_rtt_from_the_fake_clock() -> None:
    clock = Clock(5_000_000)
    pair = Pair(clock).connect()
    ping = pair.client.ping()
    clock.now += 1_250
    pair.pump(ping)
    [pong] = pair.take("client")
    assert pong == PongReceived(seq=0, rtt_us=1_250, peer_time_us=5_001_250)
    assert pair.take("server") == []


def test_close_handshake() -> None:
    pair = Pair().connect()
    pair.pump(pair.client.close("normal", "bye"))
    assert pair.client.state is State.CLOSING
    event = closed(pair.take("server"))
    assert (event.reason, event.text, event.by_peer, event.will_due) == (
        "normal",
        "bye",
        True,
        False,
    )
    assert pair.server.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        pair.server.send(m.Ping(seq=1, time_us=1))
    assert pair.client.close() == b""  # idempotent
    # The server hangs up; the client's close is complete.
    event = closed(pair.client.receive_data(b""))
    assert (event.reason, event.by_peer, event.clean) == ("normal", False, True)


def test_hang_up_without_close_makes_the_will_due() -> None:
    pair = Pair().connect()
    event = closed(pair.server.receive_data(b""))
    assert (event.reason, event.clean, event.will_due) == ("going_away", False, True)


def test_hang_up_inside_a_frame_is_truncated() -> None:
    pair = Pair().connect()
    frame = pair.client.ping()
    assert pair.server.receive_data(frame[:5]) == []
    assert closed(pair.server.receive_data(b"")).reason == "truncated"


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"\x07\x01\x00\x00\x00\x00\x00", "bad_version"),
        (b"\x01\xff\xff\xff\xff\x0f", "frame_too_large"),
        (b"\x01\x81\x00", "bad_varint"),
        (encode_frame({"ping": "x"}), "bad_message"),
    ],
)
def test_garbage_closes_with_the_codecs_reason(garbage: bytes, reason: str) -> None:
    pair = Pair().connect()
    pair.pump(garbage)
    assert closed(pair.take("server")).reason == reason
    assert closed(pair.take("client")).reason == reason  # the close frame reached it


def test_bad_cbor_closes() -> None:
    pair = Pair().connect()
    body = b"\x9f\xff"  # an indefinite array
    frame = b"\x01\x02" + body
    frame += zlib.crc32(frame).to_bytes(4, "big")
    pair.pump(frame)
    assert closed(pair.take("server")).reason == "bad_cbor"


def test_bad_crc_is_dropped_until_the_limit() -> None:
    pair = Pair(max_bad_crc=2).connect()
    bad = bytearray(pair.client.ping())
    bad[-1] ^= 0xFF
    events = pair.server.receive_data(bytes(bad))
    assert [type(e) for e in events] == [FrameDropped]
    assert pair.server.state is State.ESTABLISHED
    assert closed(pair.server.receive_data(bytes(bad))).reason == "bad_crc"


# --- publish and subscribe (the server side; routing is in test_router.py) -------------------


def test_publish_and_subscribe_events() -> None:
    pair = Pair().connect()
    pair.pump(
        pair.client.send(m.Subscribe(sid=1, pattern="plant.*.temp", group="g", policy="latest"))
    )
    [sub] = pair.take("server")
    assert isinstance(sub, Subscribed)
    assert (sub.sid, sub.pattern.text, sub.group, sub.policy) == (
        1,
        "plant.*.temp",
        "g",
        SlowConsumer.LATEST,
    )
    pair.pump(pair.client.send(m.Publish(topic="plant.l3.temp", data=b"\x01")))
    [pub] = pair.take("server")
    assert isinstance(pub, Published) and pub.tokens == ("plant", "l3", "temp")
    pair.pump(pair.client.send(m.Unsubscribe(sid=1)))
    pair.pump(pair.client.send(m.Unsubscribe(sid=1)))  # unknown now: ignored
    assert pair.take("server") == [Unsubscribed(1)]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (m.Publish(topic="plant..x"), "bad_message"),
        (m.Subscribe(sid=1, pattern="a.>.b"), "bad_message"),
        (m.Subscribe(sid=1, pattern="a", group="no spaces"), "bad_message"),
    ],
)
def test_invalid_topics_close_bad_message(message: m.Body, reason: str) -> None:
    pair = Pair().connect()
    pair.pump(pair.client.send(message))
    event = closed(pair.take("server"))
    assert event.reason == reason and ("invalid_" in event.text or "group" in event.text)


def test_duplicate_sid_and_subscription_limit() -> None:
    pair = Pair(max_subscriptions=1).connect()
    pair.pump(pair.client.send(m.Subscribe(sid=1, pattern="a")))
    pair.pump(pair.client.send(m.Subscribe(sid=1, pattern="b")))
    assert closed(pair.take("server")).reason == "bad_message"
    pair = Pair(max_subscriptions=1).connect()
    pair.pump(pair.client.send(m.Subscribe(sid=1, pattern="a")))
    pair.pump(pair.client.send(m.Subscribe(sid=2, pattern="b")))
    assert closed(pair.take("server")).reason == "limit_exceeded"


def test_permissions() -> None:
    viewer = Pair().connect("apl_view_secret")
    viewer.pump(viewer.client.send(m.Subscribe(sid=1, pattern=">")))
    assert isinstance(viewer.take("server")[0], Subscribed)
    viewer.pump(viewer.client.send(m.Publish(topic="plant.a")))
    event = closed(viewer.take("server"))
    assert (event.reason, event.text) == ("forbidden", "publish to plant.a is not allowed")

    plant = Pair().connect("apl_plant_secret")
    plant.pump(plant.client.send(m.Subscribe(sid=1, pattern="plant.*")))
    plant.pump(plant.client.send(m.Publish(topic="plant.a")))
    assert [type(e) for e in plant.take("server")] == [Subscribed, Published]
    plant.pump(plant.client.send(m.Subscribe(sid=2, pattern=">")))  # wider than plant.>
    assert closed(plant.take("server")).reason == "forbidden"


def test_forbidden_request_gets_an_error_reply_and_the_connection_stays() -> None:
    pair = Pair().connect("apl_view_secret")
    pair.pump(pair.client.send(m.Request(id=4, topic="svc.config.get", timeout_us=1000)))
    assert pair.take("server") == []
    [reply] = pair.take("client")
    assert isinstance(reply, ReplyReceived) and reply.reply.status == "error"
    assert reply.reply.error.startswith("forbidden:") and reply.pending is not None
    assert pair.server.state is State.ESTABLISHED


# --- request / reply -------------------------------------------------------------------------


def test_request_reply_and_timeout() -> None:
    clock = Clock()
    pair = Pair(clock).connect()
    pair.pump(pair.client.send(m.Request(id=1, topic="svc.echo", timeout_us=500, data=b"hi")))
    [req] = pair.take("server")
    assert isinstance(req, RequestReceived) and req.deadline_us == clock.now + 500
    assert pair.client.next_deadline == clock.now + 500
    pair.pump(b"", pair.server.send(m.Reply(id=1, data=b"hi")))
    [rep] = pair.take("client")
    assert isinstance(rep, ReplyReceived) and rep.pending and rep.pending.topic == "svc.echo"
    assert pair.client.pending_requests == {}

    pair.pump(pair.client.send(m.Request(id=2, topic="svc.slow", timeout_us=500)))
    clock.now += 499
    assert pair.client.tick() == []
    clock.now += 1
    [timeout] = pair.client.tick()
    assert isinstance(timeout, RequestTimedOut) and timeout.pending.id == 2
    pair.pump(b"", pair.server.send(m.Reply(id=2)))  # late
    [late] = pair.take("client")
    assert isinstance(late, ReplyReceived) and late.pending is None


def test_duplicate_pending_request_id_closes() -> None:
    pair = Pair().connect()
    frame = encode_frame(m.Message(m.Request(id=1, topic="svc.a", timeout_us=9)).to_wire())
    pair.pump(frame + frame)
    assert closed(pair.take("server")).reason == "bad_message"


def test_client_serves_requests_and_gets_deliveries() -> None:
    pair = Pair().connect()
    pair.pump(b"", pair.server.send(m.Request(id=7, topic="svc.x", timeout_us=100, sid=3)))
    [req] = pair.take("client")
    assert isinstance(req, RequestReceived) and req.request.sid == 3
    pair.pump(pair.client.send(m.Reply(id=7, data=b"ok")))
    [rep] = pair.take("server")
    assert isinstance(rep, ReplyReceived) and rep.pending and rep.pending.id == 7
    pair.pump(b"", pair.server.send(m.Deliver(sid=1, topic="a.b", data=b"x")))
    [got] = pair.take("client")
    assert isinstance(got, Delivered) and got.deliver.data == b"x"


# --- streams ---------------------------------------------------------------------------------


def test_stream_with_a_window_smaller_than_the_data() -> None:
    pair = Pair(client_options={"stream_window": 1000, "max_packet": 300}, stream_window=1000)
    pair.connect()
    data = bytes(range(256)) * 40  # 10240 bytes
    pair.client.open_stream(5)
    written, received, rounds = 0, bytearray(), 0
    done = False
    while not done:
        rounds += 1
        assert rounds < 200
        if written < len(data):
            written += pair.client.stream_write(5, data[written:], fin=False)
            if written == len(data):
                pair.client.stream_write(5, b"", fin=True)
        out = pair.client.data_to_send()
        for event in pair.server.receive_data(out):
            assert isinstance(event, StreamData)
            assert event.readable <= 1000  # never more than the window in flight
            received += pair.server.stream_read(5)
        for event in pair.client.receive_data(pair.server.data_to_send()):
            assert isinstance(event, StreamAcked)
            done = event.done
    assert bytes(received) == data
    assert rounds > 10  # the window made it wait


def test_an_end_that_comes_after_everything_was_read_and_released_ends_the_stream() -> None:
    """Manual release: the receiver reads and releases every byte, then the sender's end
    arrives alone (an empty final packet). Nothing is left to read: the stream is
    forgotten at once (a reader asking for more finds its end) and the sender completes."""
    pair = Pair(client_options={"manual_release": True}).connect()
    pair.server.open_stream(1)
    assert pair.server.stream_write(1, b"abc") == 3
    pair.pump()
    [data] = pair.take("client")
    assert isinstance(data, StreamData) and not data.fin
    assert pair.client.stream_read(1) == b"abc"
    pair.client.stream_release(1, 3)
    pair.pump()
    assert pair.client.stream_receiving(1) is not None  # the end is not known yet
    pair.server.stream_write(1, b"", fin=True)
    pair.pump()
    [end] = pair.take("client")
    assert isinstance(end, StreamData) and end.fin and end.readable == 0
    assert pair.client.stream_receiving(1) is None
    assert any(isinstance(e, StreamAcked) and e.done for e in pair.take("server"))


def test_ack_beyond_what_was_sent_closes_bad_ack() -> None:
    pair = Pair().connect()
    pair.server.open_stream(1)
    assert pair.server.stream_write(1, b"abc") == 3
    pair.pump()
    ack = m.Acknowledge(stream_id=1, acknowledge_offset=10, received_max_offset=10, window=100)
    pair.pump(encode_frame(m.Message(ack).to_wire()))
    event = closed(pair.take("server"))
    assert event.reason == "bad_ack" and "beyond_sent" in event.text


def test_ack_for_a_stream_never_opened_closes_bad_ack() -> None:
    pair = Pair().connect()
    ack = m.Acknowledge(stream_id=9, acknowledge_offset=0, received_max_offset=0, window=1)
    pair.pump(encode_frame(m.Message(ack).to_wire()))
    assert closed(pair.take("server")).reason == "bad_ack"


def test_packet_beyond_the_window_closes_window_exceeded() -> None:
    pair = Pair(stream_window=10).connect()
    packet = m.Packet(stream_id=1, offset=0, data=b"x" * 11)
    pair.pump(encode_frame(m.Message(packet).to_wire()))
    assert closed(pair.take("server")).reason == "window_exceeded"


# --- fuzz ------------------------------------------------------------------------------------

HELLO_FRAME = encode_frame(m.Message(m.Hello(versions=(1,), token="apl_op_secret")).to_wire())
SERVER_POOL = [
    m.Message(m.Ping(seq=1, time_us=5)),
    m.Message(m.Pong(seq=0, time_us=5)),
    m.Message(m.Publish(topic="plant.a", data=b"x", retain=True)),
    m.Message(m.Subscribe(sid=1, pattern="plant.>", group="g")),
    m.Message(m.Unsubscribe(sid=1)),
    m.Message(m.Request(id=1, topic="svc.a", timeout_us=10)),
    m.Message(m.Reply(id=1)),
    m.Message(m.Packet(stream_id=1, offset=0, data=b"abc")),
    m.Message(m.Packet(stream_id=1, offset=3, data=b"def", fin=True)),
    m.Message(m.Acknowledge(stream_id=1, acknowledge_offset=0, received_max_offset=0, window=8)),
    m.Message(m.Query(id=1, selector="a=b")),
    m.Message(m.Close(code=0, text="bye")),
]


def _fuzz_frames() -> list[bytes]:
    from tests.bus.test_fuzz import FRAMES  # every kind, from the golden frames

    return [HELLO_FRAME, *FRAMES, *(encode_frame(msg.to_wire()) for msg in SERVER_POOL)]


FUZZ_FRAMES = _fuzz_frames()


def _mutate(data: bytes, position: int, value: int, mode: int) -> bytes:
    position %= len(data) or 1
    if mode == 0:  # flip a byte
        return data[:position] + bytes([data[position] ^ (value or 1)]) + data[position + 1 :]
    if mode == 1:  # cut it short
        return data[:position]
    if mode == 2:  # insert a byte
        return data[:position] + bytes([value]) + data[position:]
    return data[:position] + bytes([value]) * 8 + data[position:]  # insert garbage


# A run of good frames with at most one corruption somewhere, so that the damage comes at
# every depth of a session, not only at its first byte.
corruptions = st.none() | st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 3))


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    greet=st.booleans(),
    frames=st.lists(st.sampled_from(FUZZ_FRAMES), max_size=10),
    corruption=corruptions,
    cuts=st.lists(st.integers(1, 64), max_size=6),
)
def test_fuzz_server_connection(
    greet: bool,
    frames: list[bytes],
    corruption: tuple[int, int, int] | None,
    cuts: list[int],
) -> None:
    clock = Clock()
    conn = server(clock, max_frame=2048, stream_window=64)
    data = (HELLO_FRAME if greet else b"") + b"".join(frames)
    if corruption is not None and data:
        data = _mutate(data, *corruption)
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    events: list[Event] = []
    for piece in pieces:
        if piece:
            got = conn.receive_data(piece)
            events += got
            for event in got:
                if isinstance(event, StreamData):
                    conn.stream_read(event.stream_id)
        clock.now += 7
        events += conn.tick()
    events += conn.receive_data(b"")
    assert all(isinstance(event, Event) for event in events)
    assert [i for i, e in enumerate(events) if isinstance(e, Closed)] == [len(events) - 1]
    assert conn.state is State.CLOSED
    # What it wrote is valid frames of valid messages, a close (if any) last.
    decoder = FrameDecoder(1 << 20)
    out = [m.parse(frame.body) for frame in decoder.feed(conn.data_to_send())]
    assert decoder.failed is None and decoder.buffered == 0
    kinds = [message.kind for message in out]
    assert "close" not in kinds[:-1]
    closing = closed(events)
    if not closing.by_peer:
        assert kinds[-1] == "close" and out[-1].body.code == closing.code


def test_token_authenticator_maps_roles_to_permissions() -> None:
    from appliance.auth.errors import Unauthenticated
    from appliance.auth.roles import Principal
    from appliance.bus.principal import token_authenticator

    class Tokens:  # the one method of TokenStore the bus uses
        def authenticate(self, token: str) -> Principal:
            if token != "apl_good":
                raise Unauthenticated("unknown token")
            return Principal(token_id="t1", name="viewer-1", role="viewer")

    auth = token_authenticator(Tokens())
    assert auth(None) is None and auth("apl_bad") is None
    principal = auth("apl_good")
    assert principal is not None and (principal.name, principal.role) == ("viewer-1", "viewer")
    assert not principal.permissions.may_publish("a.b")
    assert principal.permissions.may_subscribe(parse_pattern(">"))
