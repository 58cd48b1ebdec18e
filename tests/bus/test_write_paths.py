"""The quick write paths: a reader flushing a connection itself when its writer is idle
(`Peer.flush`, `appliance.bus.batch`), the client writing without its lock when nobody
holds it (`BusClient._write_now`), and the compiled `to_wire`/`_from_wire_fast` of
`appliance.bus.messages`. Each must give exactly the bytes, in exactly the order, of the
slow path it short-cuts, also when the socket takes only part of a write."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import trio
from hypothesis import given, settings

from appliance.bus import events as ev
from appliance.bus import messages as m
from appliance.bus.batch import WriteBatch
from appliance.bus.client import NoResponders, open_client
from appliance.bus.connection import Connection, State
from appliance.bus.endpoint import BusEndpoint
from appliance.bus.peer import Limits, Peer
from appliance.bus.principal import BusPrincipal
from tests.bus import strategies
from tests.bus.test_connection import Pair

WAIT = 10.0


def _peer_over_socket(limits: Limits | None = None) -> tuple[Peer, Connection, trio.SocketStream]:
    """A Peer whose (established) server Connection writes to a real socket; the client
    Connection reads the other end."""
    pair = Pair().connect()
    ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer = Peer(pair.server, trio.SocketStream(ours), limits or Limits(), WriteBatch())
    return peer, pair.client, trio.SocketStream(theirs)


async def _read_replies(client: Connection, stream: trio.SocketStream, count: int) -> list[int]:
    ids: list[int] = []
    with trio.fail_after(WAIT):
        while len(ids) < count:
            for event in client.receive_data(await stream.receive_some(65536)):
                assert isinstance(event, ev.ReplyReceived), event
                ids.append(event.reply.id)
    return ids


async def test_a_flush_writes_at_once_when_the_writer_is_idle() -> None:
    peer, client, theirs = _peer_over_socket()
    peer.batch.begin()
    for i in range(3):
        peer.queue_control(m.Message(m.Reply(id=i, data=b"x")))
    assert not peer.wake._event.is_set()  # collected, not handed to the writer
    peer.batch.end()
    assert not peer.control and not peer._leftover
    assert await _read_replies(client, theirs, 3) == [0, 1, 2]


async def test_what_the_socket_does_not_take_goes_first_through_the_writer() -> None:
    peer, client, theirs = _peer_over_socket()
    big = b"y" * 3000
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer._write, nursery.cancel_scope)
        count = 0
        for _ in range(50):  # far more than the socket buffers: flushes leave leftovers
            peer.batch.begin()
            for _ in range(3):
                peer.queue_control(m.Message(m.Reply(id=count, data=big)))
                count += 1
            peer.batch.end()
            if peer._leftover or peer._writing:
                break
        assert peer._leftover or peer._writing
        for _ in range(20):  # queued behind the leftover: the writer's, in order
            peer.batch.begin()
            peer.queue_control(m.Message(m.Reply(id=count, data=big)))
            count += 1
            peer.batch.end()
        assert await _read_replies(client, theirs, count) == list(range(count))
        nursery.cancel_scope.cancel()


async def test_a_busy_writer_is_woken_instead() -> None:
    peer, _, _ = _peer_over_socket()
    peer._writing = True
    peer.batch.begin()
    peer.queue_control(m.Message(m.Reply(id=1)))
    peer.batch.end()
    assert peer.wake._event.is_set() and len(peer.control) == 1


async def test_a_poke_outside_a_batch_wakes_the_writer() -> None:
    peer, _, _ = _peer_over_socket()
    peer.queue_control(m.Message(m.Reply(id=1)))
    assert peer.wake._event.is_set() and len(peer.control) == 1


async def test_only_the_task_that_began_the_batch_collects() -> None:
    batch = WriteBatch()
    batch.begin()
    assert batch.collecting()
    seen = []

    async def other() -> None:
        seen.append(batch.collecting())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        batch.end()
    assert seen == [False] and not batch.collecting()


@pytest.fixture
async def endpoint(tmp_path, nursery):
    admin = BusPrincipal.for_role("tester", "admin")
    bus = BusEndpoint(
        authenticate=lambda token: admin if token else None,
        node=m.NodeRecord(name="box"),
        unix_path=tmp_path / "bus.sock",
        limits=Limits(queue_messages=8, write_batch=4),
    )
    await nursery.start(bus.serve)
    yield bus
    await bus.stop()


async def test_deliveries_and_replies_keep_their_order_through_a_slow_reader(endpoint) -> None:
    """A `block` subscriber that reads late: deliveries go out partly by flushes, partly
    by its writer, interleaved with replies to its own requests; all in order, none lost."""
    path = str(endpoint.unix_path)
    count, payload = 400, bytes(4000)
    sub = Connection("client")
    stream = await trio.open_unix_socket(path)
    await stream.send_all(sub.hello("t"))
    with trio.fail_after(WAIT):
        while sub.state is not State.ESTABLISHED:
            sub.receive_data(await stream.receive_some(65536))
    await stream.send_all(sub.send(m.Subscribe(sid=1, pattern="t.a", policy="block")))
    seqs: list[int] = []
    replies: list[int] = []

    async def publish(bus) -> None:
        for seq in range(count):
            await bus.publish("t.a", seq.to_bytes(4, "little") + payload)

    async with open_client(path, "t", name="pub") as bus, trio.open_nursery() as nursery:
        # Subscribed once a request sent after the subscribe is answered (in order).
        await stream.send_all(sub.send(m.Request(id=0, topic="nobody.home", timeout_us=10**6)))
        with trio.fail_after(WAIT):
            while not replies:
                for event in sub.receive_data(await stream.receive_some(65536)):
                    if isinstance(event, ev.ReplyReceived):
                        replies.append(event.reply.id)
        nursery.start_soon(publish, bus)
        await trio.sleep(0.2)  # not reading: the endpoint's socket fills, the queue too
        for rid in range(1, 30):
            await stream.send_all(
                sub.send(m.Request(id=rid, topic="nobody.home", timeout_us=10**6))
            )
        with trio.fail_after(WAIT):
            while len(seqs) < count or len(replies) < 30:
                for event in sub.receive_data(await stream.receive_some(65536)):
                    if isinstance(event, ev.Delivered):
                        assert event.deliver.gap == 0
                        seqs.append(int.from_bytes(event.deliver.data[:4], "little"))
                    elif isinstance(event, ev.ReplyReceived):
                        replies.append(event.reply.id)
    assert seqs == list(range(count))
    assert replies == list(range(30))
    await stream.aclose()


async def test_client_writes_without_the_lock_keep_order_with_locked_ones(endpoint) -> None:
    """Publishes from several tasks (written at once, or, when the socket is full,
    finished under the lock) and subscribes between them: each task's messages arrive
    in order, nothing lost, nothing cut."""
    path = str(endpoint.unix_path)
    tasks, each, payload = 4, 150, bytes(6000)
    async with (
        open_client(path, "t", name="sub") as reader,
        open_client(path, "t", name="pub") as writer,
    ):
        sub = await reader.subscribe("t.>", policy="block")
        with pytest.raises(NoResponders):  # answered after the subscribe was handled
            await reader.request("nobody.home", timeout=WAIT)
        got: dict[int, list[int]] = {t: [] for t in range(tasks)}

        async def publish(task: int) -> None:
            for seq in range(each):
                await writer.publish(f"t.{task}", seq.to_bytes(4, "little") + payload)
                if seq % 50 == 0:
                    extra = await writer.subscribe(f"x.{task}.{seq}")  # the locked path
                    await extra.aclose()

        async with trio.open_nursery() as nursery:
            for task in range(tasks):
                nursery.start_soon(publish, task)
            with trio.fail_after(WAIT * 3):
                async for message in sub:
                    task = int(message.topic.split(".")[1])
                    got[task].append(int.from_bytes(message.data[:4], "little"))
                    if sum(map(len, got.values())) == tasks * each:
                        break
    assert got == {t: list(range(each)) for t in range(tasks)}


@settings(max_examples=300, deadline=None)
@given(strategies.messages)
def test_the_compiled_wire_paths_are_the_generic_ones(message: m.Message) -> None:
    assert m.Message.trusted(message.body, message.head) == message
    for record in (message.body, message.head):
        wire = record.to_wire()
        assert wire == m.Record.to_wire(record)
        assert list(wire) == list(m.Record.to_wire(record))  # the same order: same bytes
        cls = type(record)
        values = {name: getattr(record, name) for name, _, _ in cls._specs}
        assert cls.trusted(**values) == m.Record.trusted.__func__(cls, **values) == record  # type: ignore[attr-defined]
        if cls._flat:
            fast = cls._from_wire_fast(wire)
            assert fast == record
            assert fast == m.Record._from_wire_fast.__func__(cls, wire)  # type: ignore[attr-defined]


async def test_publishes_taken_together_go_out_in_one_write(endpoint, monkeypatch) -> None:
    import appliance.bus.client as client_module

    path = str(endpoint.unix_path)
    async with (
        open_client(path, "t", name="sub") as reader,
        open_client(path, "t", name="pub") as writer,
    ):
        sub = await reader.subscribe("t.>", policy="block")
        with pytest.raises(NoResponders):
            await reader.request("nobody.home", timeout=WAIT)
        writes: list[int] = []
        real_write = client_module.os.write

        def counting_write(fd: int, data: bytes) -> int:
            if fd == writer._link.fd():  # not the endpoint's, in this process too
                writes.append(len(data))
            return real_write(fd, data)

        monkeypatch.setattr(client_module.os, "write", counting_write)
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(writer.publish, f"t.{i}", i.to_bytes(4, "little"))
        monkeypatch.setattr(client_module.os, "write", real_write)
        assert len(writes) == 1, writes  # the twenty frames, in one write
        got = []
        with trio.fail_after(WAIT):
            async for message in sub:
                got.append(int(message.topic.split(".")[1]))
                if len(got) == 20:
                    break
        assert sorted(got) == list(range(20))


async def test_an_iterator_takes_buffered_messages_without_starving_others(endpoint) -> None:
    from appliance.bus.client import YIELD_EVERY

    path = str(endpoint.unix_path)
    count = 3 * YIELD_EVERY
    async with (
        open_client(path, "t", name="sub") as reader,
        open_client(path, "t", name="pub") as writer,
    ):
        sub = await reader.subscribe("t.a", policy="block")
        with pytest.raises(NoResponders):
            await reader.request("nobody.home", timeout=WAIT)
        for seq in range(count):
            await writer.publish("t.a", seq.to_bytes(4, "little"))
        for _ in range(1000):  # until every message is in the iterator's buffer
            if sub._receive.statistics().current_buffer_used == count:
                break
            await trio.sleep(0.01)
        ticks = 0
        longest = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()
            seqs, since = [], ticks
            async for message in sub:
                seqs.append(int.from_bytes(message.data, "little"))
                if ticks == since:
                    longest += 1
                else:
                    since, longest = ticks, 1
                assert longest <= 3 * YIELD_EVERY  # a switch order within a batch is random
                if len(seqs) == count:
                    break
            nursery.cancel_scope.cancel()
        assert seqs == list(range(count))
        with trio.move_on_after(0.05) as scope:  # nothing buffered: cancellation ends it
            await sub.__anext__()
        assert scope.cancelled_caught


STALLED_WRITE_SCRIPT = """
import json, sys, trio
import appliance.bus.client as client_module
from appliance.bus import messages as m
from appliance.bus.client import ConnectionClosed, open_client
from appliance.bus.connection import Connection, State
from appliance.bus.endpoint import BusEndpoint
from appliance.bus.peer import Limits
from appliance.bus.principal import BusPrincipal

client_module.DEFAULT_TIMEOUT = 0.5

async def main(path):
    admin = BusPrincipal.for_role("tester", "admin")
    bus = BusEndpoint(
        authenticate=lambda token: admin if token else None,
        node=m.NodeRecord(name="box"),
        unix_path=path,
        limits=Limits(queue_messages=8, stuck_timeout=60.0),
    )
    outcomes = []
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.serve)
        # A `block` subscriber that never reads: the endpoint stops reading the publisher.
        sub = Connection("client")
        stream = await trio.open_unix_socket(str(path))
        await stream.send_all(sub.hello("t"))
        while sub.state is not State.ESTABLISHED:
            sub.receive_data(await stream.receive_some(65536))
        await stream.send_all(sub.send(m.Subscribe(sid=1, pattern="t.a", policy="block")))
        async with open_client(str(path), "t", name="pub") as writer:
            await trio.sleep(0.2)

            async def publish():
                try:
                    for _ in range(100000):
                        await writer.publish("t.a", bytes(60000))
                    outcomes.append("all written")
                except (trio.TooSlowError, ConnectionClosed) as exc:
                    outcomes.append(type(exc).__name__)

            with trio.move_on_after(30):
                async with trio.open_nursery() as publishers:
                    for _ in range(4):
                        publishers.start_soon(publish)
        await stream.aclose()
        await bus.stop()
        nursery.cancel_scope.cancel()
    print(json.dumps(outcomes))

from pathlib import Path
trio.run(main, Path(sys.argv[1]))
"""


def test_a_write_that_times_out_ends_the_connection_for_every_writer(tmp_path) -> None:
    """Four tasks publish while the endpoint has stopped reading (a `block` subscriber
    that never reads): the write that waits times out, and the tasks whose bytes it had
    taken hear that the connection is over, instead of waiting for bytes that will never
    be written; the client then closes without writing into the broken stream again."""
    done = subprocess.run(
        [sys.executable, "-c", STALLED_WRITE_SCRIPT, str(tmp_path / "bus.sock")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = json.loads(done.stdout.splitlines()[-1])
    assert len(outcomes) == 4, outcomes
    assert "TooSlowError" in outcomes and "all written" not in outcomes, outcomes
    assert set(outcomes) <= {"TooSlowError", "ConnectionClosed"}, outcomes
