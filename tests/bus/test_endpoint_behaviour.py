"""The endpoint's promised behaviour, checked on the real process over real sockets.

Slow consumers under each policy (`block` holds the publisher, then the subscriber is
cut off as `slow_consumer`; `drop` reports every lost message as a `gap`; `latest` keeps
the newest value of each topic), last wills, retained values, the hello deadline, node
names held by one connection, stream flow control violations (`bad_ack`,
`window_exceeded`), and bad clients that never disturb the others.

Subscribers that must stop reading are raw sockets speaking through a sans-IO client
`Connection` (`RawPeer`): nothing reads for them behind the test's back, and crafted
frames are exactly what a broken client would send. Well-behaved parties are
`appliance.bus.client` clients.
"""

from __future__ import annotations

import zlib

import pytest
import trio

from appliance.bus import messages as m
from appliance.bus.client import BusClient, open_client
from appliance.bus.codec import encode_frame, encode_varint
from appliance.bus.events import Closed, Delivered, Established, PongReceived, StreamData
from appliance.bus.reasons import reason_for
from tests.bus.test_endpoint import WAIT, RawPeer, _settle, bus_endpoints
from tests.conftest import ApplianceProcess

# The endpoint's fixed bounds (appliance/bus/peer.py `Limits`; no setting changes them).
STUCK_TIMEOUT = 10.0  # a write or a block publisher waiting for a consumer
HELLO_TIMEOUT = 10.0
LONG_WAIT = STUCK_TIMEOUT + 15.0  # bounds the waits that include one of those timeouts


@pytest.fixture(scope="module")
def behaviour_appliance(tmp_path_factory):
    process = ApplianceProcess(tmp_path_factory.mktemp("behaviour") / "data")
    process.wait_ready()
    yield process
    process.stop()


# --- raw peers -----------------------------------------------------------------------------


async def raw_hello(
    path: str, token: str, *, name: str | None = None, will: m.Will | None = None
) -> RawPeer:
    """A raw connection past the welcome, as node `name`."""
    peer = await RawPeer.open(path)
    node = m.NodeRecord(name=name) if name is not None else None
    await peer.stream.send_all(peer.conn.hello(token, node=node, will=will))
    events = await peer.events()
    assert any(isinstance(e, Established) for e in events), events
    return peer


async def raw_send(peer: RawPeer, body: m.Body, head: m.Head | None = None) -> None:
    await peer.stream.send_all(peer.conn.send(m.Message(body, head) if head else body))


async def raw_crafted(peer: RawPeer, body: m.Body, head: m.Head | None = None) -> None:
    """Send a message the client `Connection` would never send itself (it keeps flow
    control): encoded and framed by hand."""
    message = m.Message(body, head) if head is not None else m.Message(body)
    await peer.stream.send_all(encode_frame(message.to_wire()))


async def raw_round_trip(peer: RawPeer, query_id: int) -> None:
    """Send a query and read until its result: everything the peer sent before it has
    been handled by the endpoint (its reader handles a connection's messages in order)."""
    await raw_send(peer, m.Query(id=query_id))
    with trio.fail_after(WAIT):
        while True:
            data = await peer.stream.receive_some(65536)
            assert data, "the endpoint hung up"
            events = peer.conn.receive_data(data)
            assert not any(isinstance(e, Closed) for e in events), events
            if any(getattr(getattr(e, "result", None), "id", None) == query_id for e in events):
                return


async def raw_until(peer: RawPeer, done) -> list:
    """Read events until `done(events so far)` is true, or the end; returns them all.
    Unbounded: the caller bounds it."""
    seen: list = []
    while not done(seen):
        data = await peer.stream.receive_some(65536)
        seen.extend(peer.conn.receive_data(data))
        if not data:
            break
    return seen


def deliveries(events: list) -> list[m.Deliver]:
    return [e.deliver for e in events if isinstance(e, Delivered)]


def closed_event(events: list) -> Closed | None:
    return next((e for e in events if isinstance(e, Closed)), None)


def numbered(seq: int, size: int) -> bytes:
    """A payload of `size` bytes that starts with its sequence number."""
    head = b"%08d" % seq
    return head + b"." * (size - len(head))


def seq_of(data: bytes) -> int:
    return int(data[:8])


# --- slow consumers ------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_block_subscriber_that_stops_reading_holds_the_publisher_then_is_cut_off(
    behaviour_appliance,
):
    app = behaviour_appliance
    unix, _ = bus_endpoints(app)
    stuck = await raw_hello(unix, app.token, name="stuck-block")
    await raw_send(stuck, m.Subscribe(sid=1, pattern="block.flood", policy="block"))
    await raw_round_trip(stuck, 1)  # subscribed; from now on it reads nothing
    publisher = await raw_hello(unix, app.token, name="block-publisher")
    # Far more than the subscription's queue (4 MiB), a write batch and the socket
    # buffers can hold: the endpoint must stop taking the publisher's messages.
    size, count = 32 << 10, 400
    flood = b"".join(
        publisher.conn.send(m.Publish(topic="block.flood", data=numbered(i, size)))
        for i in range(count)
    )
    flood += publisher.conn.ping()

    with trio.fail_after(LONG_WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.stream.send_all, flood)
            events = await raw_until(
                publisher,
                lambda seen: any(isinstance(e, PongReceived) for e in seen),
            )
    assert closed_event(events) is None
    # The ping behind the flood was answered only once the stuck subscriber was cut off:
    # the publisher waited for it (flow control), and was not cut off itself.
    cut = f"bus connection {stuck.conn.connection_id} cut off: slow_consumer"
    assert cut in app.log()

    # The stuck subscriber lost nothing before the cut, and got no close frame.
    with trio.fail_after(WAIT):
        got = await raw_until(stuck, lambda seen: closed_event(seen) is not None)
    closed = closed_event(got)
    assert closed is not None and not closed.clean  # the byte stream just ended
    received = deliveries(got)
    assert 0 < len(received) < count
    assert [seq_of(d.data) for d in received] == list(range(len(received)))
    assert all(d.gap == 0 for d in received)

    # The publisher carries on: a new subscriber gets what it publishes next.
    async with open_client(unix, app.token, name="after-block") as fresh:
        sub = await fresh.subscribe("block.flood")
        await _settle(fresh)
        await raw_send(publisher, m.Publish(topic="block.flood", data=b"still here"))
        with trio.fail_after(WAIT):
            assert (await sub.__anext__()).data == b"still here"
    await publisher.stream.aclose()
    await stuck.stream.aclose()


async def test_a_drop_subscriber_sees_every_lost_message_as_a_gap(behaviour_appliance):
    app = behaviour_appliance
    unix, _ = bus_endpoints(app)
    slow = await raw_hello(unix, app.token, name="slow-drop")
    await raw_send(slow, m.Subscribe(sid=1, pattern="drop.flood", policy="drop"))
    await raw_round_trip(slow, 1)
    count = 3000  # 12 MB of 4 KiB messages: the queue holds 1024 (4 MiB)
    async with open_client(unix, app.token, name="drop-publisher") as publisher:
        for i in range(count):
            await publisher.publish("drop.flood", numbered(i, 4096))
        await _settle(publisher)  # every publish was routed, none waited
        # The queue may still be full when reading starts: end markers are published
        # until one gets through; each counts as published too.
        seen_end = trio.Event()
        markers = 0

        async def publish_end_markers() -> None:
            nonlocal markers
            while not seen_end.is_set():
                await publisher.publish("drop.flood", b"end:%d" % markers)
                markers += 1
                with trio.move_on_after(0.05):
                    await seen_end.wait()

        total = 0
        received: list[m.Deliver] = []
        with trio.fail_after(WAIT * 2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish_end_markers)
                while not seen_end.is_set():
                    data = await slow.stream.receive_some(65536)
                    assert data, "the endpoint hung up"
                    for deliver in deliveries(slow.conn.receive_data(data)):
                        if seen_end.is_set():
                            break
                        received.append(deliver)
                        total += 1 + deliver.gap
                        if deliver.data.startswith(b"end:"):
                            marker = int(deliver.data.removeprefix(b"end:"))
                            seen_end.set()
    # Everything published up to the first marker received is either delivered or
    # counted in a gap: nothing is lost silently.
    assert total == count + marker + 1
    assert any(d.gap > 0 for d in received)
    assert len(received) < count
    sequence = [seq_of(d.data) for d in received[:-1]]
    assert sequence == sorted(set(sequence))  # in order, none twice
    await slow.stream.aclose()


async def test_a_latest_subscriber_keeps_the_newest_value_of_each_topic(behaviour_appliance):
    app = behaviour_appliance
    unix, _ = bus_endpoints(app)
    slow = await raw_hello(unix, app.token, name="slow-latest")
    await raw_send(slow, m.Subscribe(sid=1, pattern="latest.*", policy="latest"))
    await raw_round_trip(slow, 1)
    count = 1000  # per topic, 4 KiB each: far more than the socket buffers hold
    async with open_client(unix, app.token, name="latest-publisher") as publisher:
        for i in range(count):
            for topic in ("latest.a", "latest.b"):
                await publisher.publish(topic, numbered(i, 4096))
        await _settle(publisher)

    newest = {"latest.a": -1, "latest.b": -1}
    received: list[m.Deliver] = []

    def both_newest(seen: list) -> bool:
        for deliver in deliveries(seen)[len(received) :]:
            received.append(deliver)
            value = seq_of(deliver.data)
            assert value > newest[deliver.topic]  # never an older value after a newer one
            newest[deliver.topic] = value
        return all(v == count - 1 for v in newest.values())

    with trio.fail_after(WAIT):
        await raw_until(slow, both_newest)
    # Each replaced value is counted in the gap of the value that replaced it.
    assert sum(1 + d.gap for d in received) == 2 * count
    assert len(received) < 2 * count and any(d.gap > 0 for d in received)
    await slow.stream.aclose()


# --- last will and retained values ---------------------------------------------------------


async def test_the_last_will_is_published_when_a_client_vanishes_not_when_it_closes(
    behaviour_appliance,
):
    app = behaviour_appliance
    unix, _ = bus_endpoints(app)
    async with open_client(unix, app.token, name="will-watcher") as watcher:
        wills = await watcher.subscribe("will.>")
        await _settle(watcher)

        # A normal close: no will. Once the node is gone, a marker is the next message.
        polite = m.Will(topic="will.polite", data=b"should not appear")
        async with open_client(unix, app.token, name="will-polite", will=polite):
            pass
        with trio.fail_after(WAIT):
            while any(n.name == "will-polite" for n in await watcher.query("")):  # noqa: ASYNC110
                await trio.sleep(0.05)
        await watcher.publish("will.marker", b"marker")
        with trio.fail_after(WAIT):
            first = await wills.__anext__()
        assert (first.topic, first.data) == ("will.marker", b"marker")

        # Vanishing: the socket closes without a close frame.
        vanish = m.Will(topic="will.vanished", data=b"gone", headers={"why": "test"})
        peer = await raw_hello(unix, app.token, name="will-vanisher", will=vanish)
        await peer.stream.aclose()
        with trio.fail_after(WAIT):
            message = await wills.__anext__()
        assert (message.topic, message.data, message.headers, message.source) == (
            "will.vanished",
            b"gone",
            {"why": "test"},
            "will-vanisher",
        )

        # Closed by the endpoint for a violation: the will is published too.
        broken = m.Will(topic="will.broken", data=b"bad frame")
        peer = await raw_hello(unix, app.token, name="will-breaker", will=broken)
        await peer.stream.send_all(b"\x07\x01\x00\x00\x00\x00\x00")  # version 7
        closed = await peer.closed()
        assert closed.reason == "bad_version"
        with trio.fail_after(WAIT):
            message = await wills.__anext__()
        assert (message.topic, message.data, message.source) == (
            "will.broken",
            b"bad frame",
            "will-breaker",
        )
        await peer.stream.aclose()


async def _first_messages(client: BusClient, pattern: str, publisher: BusClient, count: int):
    """Subscribe, then publish a marker: the retained values come first, then the marker."""
    sub = await client.subscribe(pattern)
    await _settle(client)
    await publisher.publish("ret.marker", b"marker")
    out = []
    with trio.fail_after(WAIT):
        while not out or out[-1].topic != "ret.marker":
            out.append(await sub.__anext__())
    assert len(out) == count + 1
    return [(x.topic, x.data, x.retained) for x in out[:-1]], sub


async def test_retained_values_reach_new_subscribers_until_cleared(behaviour_appliance):
    app = behaviour_appliance
    unix, _ = bus_endpoints(app)
    async with (
        open_client(unix, app.token, name="ret-publisher") as publisher,
        open_client(unix, app.token, name="ret-live") as live,
        open_client(unix, app.token, name="ret-late-1") as late1,
        open_client(unix, app.token, name="ret-late-2") as late2,
    ):
        live_sub = await live.subscribe("ret.>")
        await _settle(live)
        await publisher.publish("ret.a", b"1", retain=True)
        await publisher.publish("ret.b", b"2", retain=True)
        await publisher.publish("ret.b", b"3", retain=True)  # replaces ret.b's value
        await _settle(publisher)
        with trio.fail_after(WAIT):
            live_got = [await live_sub.__anext__() for _ in range(3)]
        # A live subscriber gets them as ordinary messages.
        assert [(x.topic, x.data, x.retained) for x in live_got] == [
            ("ret.a", b"1", False),
            ("ret.b", b"2", False),
            ("ret.b", b"3", False),
        ]

        retained, _ = await _first_messages(late1, "ret.*", publisher, 2)
        assert sorted(retained) == [("ret.a", b"1", True), ("ret.b", b"3", True)]

        await publisher.publish("ret.a", b"", retain=True)  # an empty retained value clears
        await _settle(publisher)
        with trio.fail_after(WAIT):
            marker = await live_sub.__anext__()  # ret.marker, published by _first_messages
            cleared = await live_sub.__anext__()
        assert marker.topic == "ret.marker"
        assert (cleared.topic, cleared.data, cleared.retained) == ("ret.a", b"", False)

        retained, _ = await _first_messages(late2, "ret.*", publisher, 1)
        assert retained == [("ret.b", b"3", True)]


# --- the hello, node names -----------------------------------------------------------------


@pytest.mark.slow
async def test_a_connection_that_says_nothing_is_closed_with_hello_timeout(behaviour_appliance):
    unix, _ = bus_endpoints(behaviour_appliance)
    silent = await RawPeer.open(unix)
    with trio.fail_after(HELLO_TIMEOUT + WAIT):
        events = await raw_until(silent, lambda seen: closed_event(seen) is not None)
    closed = closed_event(events)
    assert closed is not None
    assert (closed.code, closed.reason, closed.by_peer, closed.clean) == (
        reason_for("hello_timeout").code,
        "hello_timeout",
        True,
        True,
    )
    # After its close the endpoint hangs up (it waits a short grace for ours).
    with trio.fail_after(WAIT):
        assert await silent.stream.receive_some(65536) == b""
    await silent.stream.aclose()


async def test_a_second_connection_with_a_held_name_is_closed_name_taken(behaviour_appliance):
    app = behaviour_appliance
    unix, _ = bus_endpoints(app)
    async with open_client(unix, app.token, name="only-one") as first:
        sub = await first.subscribe("names.check")
        await _settle(first)
        second = await RawPeer.open(unix)
        hello = second.conn.hello(app.token, node=m.NodeRecord(name="only-one"))
        await second.stream.send_all(hello)
        with trio.fail_after(WAIT):
            events = await raw_until(second, lambda seen: closed_event(seen) is not None)
        closed = closed_event(events)
        assert closed is not None
        assert (closed.reason, "only-one" in closed.text) == ("name_taken", True)
        await second.stream.aclose()
        # The first holder keeps its name and its subscriptions.
        assert [n.name for n in await first.query("")].count("only-one") == 1
        await first.publish("names.check", b"mine")
        with trio.fail_after(WAIT):
            assert (await sub.__anext__()).data == b"mine"


# --- stream flow control -------------------------------------------------------------------


def _readable(events: list) -> int:
    return max((e.readable for e in events if isinstance(e, StreamData)), default=0)


async def test_an_ack_for_a_stream_never_sent_is_bad_ack(behaviour_appliance):
    app = behaviour_appliance
    unix, _ = bus_endpoints(app)
    peer = await raw_hello(unix, app.token, name="ack-stranger")
    ack = m.Acknowledge(stream_id=7, acknowledge_offset=10, received_max_offset=10, window=1024)
    await raw_crafted(peer, ack)
    closed = await peer.closed()
    assert (closed.code, closed.reason) == (reason_for("bad_ack").code, "bad_ack")
    assert "stream 7" in closed.text and "never sent" in closed.text
    await peer.stream.aclose()


async def test_an_ack_for_offsets_never_sent_is_bad_ack(behaviour_appliance):
    app = behaviour_appliance
    unix, _ = bus_endpoints(app)
    liar = await raw_hello(unix, app.token, name="ack-liar")
    async with open_client(unix, app.token, name="ack-source") as source:
        writer = await source.open_stream("ack-liar")
        await writer.send(b"x" * 1000)
        with trio.fail_after(WAIT):
            events = await raw_until(liar, lambda seen: _readable(seen) >= 1000)
        stream_id = next(e.stream_id for e in events if isinstance(e, StreamData))
        # The endpoint's relay sent bytes 0..999 of its stream; claim 5000 arrived.
        ack = m.Acknowledge(
            stream_id=stream_id, acknowledge_offset=5000, received_max_offset=5000, window=65536
        )
        await raw_crafted(liar, ack)
        closed = await liar.closed()
        assert (closed.code, closed.reason) == (reason_for("bad_ack").code, "bad_ack")
        assert "beyond_sent" in closed.text and "5000" in closed.text
        await liar.stream.aclose()


async def test_stream_data_beyond_the_window_is_window_exceeded(behaviour_appliance):
    app = behaviour_appliance
    unix, _ = bus_endpoints(app)
    async with open_client(unix, app.token, name="window-sink") as sink:
        sender = await raw_hello(unix, app.token, name="window-cheat")
        head = m.Head(destination="window-sink")
        sender.conn.open_stream(1, head=head)
        assert sender.conn.stream_write(1, b"a" * 1000) == 1000  # within the window
        await sender.stream.send_all(sender.conn.data_to_send())
        with trio.fail_after(WAIT):
            reader = await sink.accept_stream()
            chunk = await reader.receive()
        assert chunk is not None and chunk.data == b"a" * 1000
        # The window is 64 KiB past what was acknowledged (at most 1000 bytes): a packet
        # ending 70,000 bytes later is beyond it.
        await raw_crafted(sender, m.Packet(stream_id=1, offset=1000, data=b"b" * 70_000), head)
        closed = await sender.closed()
        assert (closed.code, closed.reason) == (
            reason_for("window_exceeded").code,
            "window_exceeded",
        )
        assert "stream 1" in closed.text
        await sender.stream.aclose()


# --- bad clients and the others ------------------------------------------------------------


def _frame(version: int, body: bytes, *, crc_ok: bool = True) -> bytes:
    head = encode_varint(version) + encode_varint(len(body))
    crc = zlib.crc32(head + body) ^ (0 if crc_ok else 1)
    return head + body + crc.to_bytes(4, "big")


BAD_CLIENTS = {
    # name: (what it sends after a good hello, the close reason it gets)
    "claims-a-huge-frame": (b"\x01" + encode_varint(1 << 40), "frame_too_large"),
    "sends-bad-cbor": (_frame(1, b"\xff"), "bad_cbor"),
    "sends-bad-checksums": (_frame(1, b"\xa0", crc_ok=False) * 3, "bad_crc"),
    "sends-a-bad-pattern": (
        encode_frame(m.Message(m.Subscribe(sid=1, pattern="a..b")).to_wire()),
        "bad_message",
    ),
    "sends-a-bad-selector": (
        encode_frame(m.Message(m.Query(id=1, selector="key in (")).to_wire()),
        "bad_message",
    ),
    "says-hello-twice": (
        encode_frame(m.Message(m.Hello(versions=(1,))).to_wire()),
        "unexpected_message",
    ),
}


async def test_bad_clients_never_disturb_a_client_connected_at_the_same_time(
    behaviour_appliance,
):
    app = behaviour_appliance
    unix, tcp = bus_endpoints(app)
    reasons: dict[str, str] = {}
    async with (
        open_client(tcp, app.token, name="steady-publisher") as publisher,
        open_client(unix, app.token, name="steady-subscriber") as subscriber,
    ):
        sub = await subscriber.subscribe("steady.>")
        await _settle(subscriber)
        sent = 0
        bad_done = trio.Event()

        async def publish_meanwhile() -> None:
            nonlocal sent
            while not bad_done.is_set():
                await publisher.publish("steady.seq", b"%d" % sent)
                sent += 1
                await trio.sleep(0.01)

        async def misbehave(name: str, garbage: bytes) -> None:
            peer = await raw_hello(unix, app.token, name=name)
            await peer.stream.send_all(garbage)
            reasons[name] = (await peer.closed()).reason
            await peer.stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_meanwhile)
            async with trio.open_nursery() as bad:
                for name, (garbage, _) in BAD_CLIENTS.items():
                    bad.start_soon(misbehave, name, garbage)
            bad_done.set()
        await publisher.publish("steady.seq", b"last")
        got = []
        with trio.fail_after(WAIT):
            while not got or got[-1] != b"last":
                got.append((await sub.__anext__()).data)
        # Every message of the steady pair arrived, in order, while the others were closed.
        assert got == [b"%d" % i for i in range(sent)] + [b"last"]
        assert await publisher.request("svc.health", timeout=WAIT)  # served as before
    assert reasons == {name: reason for name, (_, reason) in BAD_CLIENTS.items()}
