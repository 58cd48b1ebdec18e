"""A bus publisher for the benchmark that writes a batch of publishes per socket write.

    async with open_batch_publisher(target, token, name="bench-pub") as publisher:
        await publisher.publish_batch("bench.data", [payload, payload, ...])
        await publisher.barrier()     # the endpoint has handled everything sent before

It speaks the real protocol through `appliance.bus.connection.Connection`, the sans-IO
state machine `appliance.bus.client` drives too, frame for frame what `BusClient.publish`
would send; what it leaves out is the client's per-message cost around it (a task
switch and one write per message, unless other tasks publish at the same time). So the
publish -> subscriber figures measure the endpoint and the subscriber, not the
publishing client. The same number of
stamped messages is sent either way; each is stamped just before its batch is encoded,
so its latency includes the wait for the rest of its batch.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from appliance.bus import events as ev
from appliance.bus import messages as m
from appliance.bus.connection import Connection, State

TIMEOUT_S = 10.0
BARRIER = "bench.barrier"


class PublisherClosed(Exception):
    pass


class BatchPublisher:
    def __init__(self, stream: trio.abc.Stream, conn: Connection) -> None:
        self._stream = stream
        self._conn = conn
        self._replies: dict[int, trio.Event] = {}
        self._writing = trio.Lock()  # the main task's batches and the reader's pongs
        self._next_id = 1
        self.closed: ev.Closed | None = None

    async def publish_batch(self, topic: str, payloads: list[bytes]) -> None:
        """Every payload as one `publish` frame, all of them in one write."""
        conn = self._conn
        data = b"".join([conn.send(m.Publish(topic=topic, data=p)) for p in payloads])
        await self._write(data)

    async def barrier(self, within: float = TIMEOUT_S) -> None:
        """A request nobody serves: its `no_responders` reply comes after everything sent
        before it was handled (one connection's frames are handled in order). `within`
        seconds, which is also the request's deadline on the wire."""
        request_id, self._next_id = self._next_id, self._next_id + 1
        replied = self._replies[request_id] = trio.Event()
        request = m.Request(id=request_id, topic=BARRIER, timeout_us=int(within * 1e6))
        await self._write(self._conn.send(request))
        with trio.fail_after(within):
            await replied.wait()

    async def _write(self, data: bytes) -> None:
        if self.closed is not None:
            raise PublisherClosed(f"{self.closed.reason}: {self.closed.text}")
        async with self._writing:
            with trio.fail_after(TIMEOUT_S):
                await self._stream.send_all(data)

    async def _read_until_established(self) -> None:
        while True:
            data = await self._stream.receive_some(65536)
            for event in self._conn.receive_data(data):
                if isinstance(event, ev.Established):
                    return
                if isinstance(event, ev.Closed):
                    raise PublisherClosed(f"{event.reason}: {event.text}")
            if not data:
                raise PublisherClosed("hung up before the welcome")

    async def read(self) -> None:
        """Take what the endpoint sends (replies, pings, close) until the connection ends,
        and write what the protocol answers by itself (pongs) at once."""
        while self._conn.state is not State.CLOSED:
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            for event in self._conn.receive_data(data):
                if isinstance(event, ev.ReplyReceived) and event.reply.id in self._replies:
                    self._replies.pop(event.reply.id).set()
                elif isinstance(event, ev.Closed):
                    self.closed = event
            answers = self._conn.data_to_send()
            if answers and self.closed is None:
                await self._write(answers)

    async def aclose(self) -> None:
        if self._conn.state in (State.HELLO, State.ESTABLISHED):
            with trio.move_on_after(1.0):
                await self._stream.send_all(self._conn.close("normal", "benchmark done"))
        await trio.aclose_forcefully(self._stream)


@asynccontextmanager
async def open_batch_publisher(target: str, token: str, name: str) -> AsyncIterator[BatchPublisher]:
    if target.startswith("tcp://"):
        host, _, port = target.removeprefix("tcp://").rpartition(":")
        stream: trio.abc.Stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    else:
        stream = await trio.open_unix_socket(target.removeprefix("unix://"))
    conn = Connection("client")
    publisher = BatchPublisher(stream, conn)
    try:
        with trio.fail_after(TIMEOUT_S):
            host = m.Host(hostname=socket.gethostname() or "localhost", pid=os.getpid())
            await stream.send_all(conn.hello(token, node=m.NodeRecord(name=name, host=host)))
            await publisher._read_until_established()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.read)
            try:
                yield publisher
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await publisher.aclose()
