"""One bus connection's life inside the endpoint: its queues and its task tree.

    connection nursery (Peer.run)
    ├── reader   receive_some (bounded) -> Connection.receive_data -> on_event (the endpoint)
    ├── writer   the only task that takes bytes out of the Connection and writes them
    └── timer    hello deadline, the closing handshake's deadline, Connection.tick

**One writer at a time.** `Connection.send` and `close` hand back everything queued so
far, so the bytes must be written in the order they were taken. Everybody queues work
(`queue_control` for requests and replies, a `SubscriberQueue` per subscription for
deliveries) and pokes the connection (`poke`); every byte is taken by `_take_output`.
The writer task takes and writes; while it is idle, a reader at the end of a received
chunk (`appliance.bus.batch`) takes and writes too (`flush`), without waiting: what the
socket does not accept at once is handed to the writer (`_leftover`), which writes it
before taking anything else, and nobody else writes until it has (`_writing`).

A consumer is cut off (`slow_consumer`, no close frame: a write may have stopped
mid-frame, and it is not reading anyway) when a write to it does not complete within
`Limits.stuck_timeout` or when its control queue overflows.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import trio

from appliance.bus import events as ev
from appliance.bus import messages as m
from appliance.bus.batch import WriteBatch
from appliance.bus.connection import Connection, State
from appliance.bus.flow import SubscriberQueue
from appliance.bus.reasons import LocalProtocolError

log = logging.getLogger("appliance.bus")

OnEvent = Callable[["Peer", ev.Event], Awaitable[None]]


def now_us() -> int:
    """The endpoint's clock for the sans-IO parts: trio's, in microseconds."""
    return int(trio.current_time() * 1_000_000)


@dataclass(frozen=True)
class Limits:
    """Every bound of the endpoint in one place (seconds, counts, bytes)."""

    receive_chunk: int = 65536  # bytes per receive_some
    queue_messages: int = 1024  # per subscription
    queue_bytes: int = 4 << 20  # per subscription
    control_messages: int = 2048  # requests and replies waiting for one connection's writer
    write_batch: int = 256  # deliveries per write
    stuck_timeout: float = 10.0  # a write, or a block publisher, waiting for a consumer
    hello_timeout: float = 10.0
    close_grace: float = 2.0  # after close: waiting for the peer's close or hang-up
    expire_interval: float = 0.05  # how late a `timeout` reply may be
    retained_count: int = 10_000
    retained_bytes: int = 16 << 20
    ping_timeout: float = 60.0  # no frame for this long: closed with ping_timeout
    stream_buffer: int = 256 << 10  # bytes a stream relay holds unacknowledged
    stream_keep: float = 60.0  # how long a relay waits for its destination to come back
    max_relays: int = 256


class Signal:
    """A level-triggered wake-up: `set` any number of times, `wait` returns once per burst."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class Peer:
    """One connection's state beyond the protocol: its queues and its task tree's scope."""

    def __init__(
        self,
        conn: Connection,
        stream: trio.abc.Stream,
        limits: Limits,
        batch: WriteBatch | None = None,
    ) -> None:
        self.conn = conn
        self.id = conn.connection_id  # ours: a dialed link's Connection takes the peer's
        self.stream = stream
        self.limits = limits
        self.queues: dict[int, SubscriberQueue[m.Message]] = {}
        self.control: deque[m.Message] = deque()
        self.wake = Signal()  # the writer has work
        self.room = Signal()  # the writer took deliveries: block publishers may retry
        self.scope = trio.CancelScope()
        self.established = False
        self.will: m.Will | None = None
        self.close_request: tuple[str, str] | None = None
        self.closing_since: float | None = None
        self.closed: ev.Closed | None = None
        self.cut: str | None = None  # cut off without a close frame: why
        self.link_url: str | None = None  # a link this endpoint dialed: to where
        self.batch = batch
        # A socket written without waiting by `flush` (other streams: the writer only).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._writing = False  # the writer is in a write
        self._leftover: bytes | memoryview = b""  # taken by `flush`, not yet written

    @property
    def alive(self) -> bool:
        return self.closed is None and self.cut is None and self.conn.state is not State.CLOSED

    def queue_control(self, message: m.Message) -> None:
        if not self.alive:
            return
        if len(self.control) >= self.limits.control_messages:
            self.cut_off("slow_consumer", f"{len(self.control)} requests and replies unread")
            return
        self.control.append(message)
        self.poke()

    def poke(self) -> None:
        """There is something to send: flushed at the end of the current batch, or by
        the writer, woken now."""
        batch = self.batch
        if batch is not None and batch.collecting():
            batch.add(self)
        else:
            self.wake.set()

    def flush(self) -> None:
        """Write what is due now from the calling task, without waiting, if the writer is
        idle; what the socket does not take at once (or anything while the writer is
        busy or the connection is not plainly established) is the writer's."""
        sock = self._socket
        if (
            sock is None
            or self._writing
            or self._leftover
            or self.close_request is not None
            or self.conn.state is not State.ESTABLISHED
            or not self.alive
        ):
            self.wake.set()
            return
        fd = sock.fileno()
        if fd < 0:
            self.wake.set()
            return
        out = self._take_output()
        if not out:
            return
        try:
            written = os.write(fd, out)
        except OSError:  # full (BlockingIOError), or broken: the writer's write tells
            written = 0
        if written < len(out):
            self._leftover = memoryview(out)[written:]
            self.wake.set()
        else:
            self.room.set()

    def request_close(self, reason: str, text: str) -> None:
        if self.alive and self.close_request is None:
            self.close_request = (reason, text)
            self.wake.set()

    def cut_off(self, reason: str, text: str) -> None:
        """End the connection now, without a close frame (it is not reading)."""
        if self.cut is None:
            self.cut = reason
            log.warning("bus connection %d cut off: %s: %s", self.id, reason, text)
        self.scope.cancel()
        self.room.set()

    async def run(self, on_event: OnEvent) -> None:
        """The connection's task tree, until it ends (or `scope` is cancelled)."""
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, on_event)
                nursery.start_soon(self._write, nursery.cancel_scope)
                nursery.start_soon(self._watch)

    async def _read(self, on_event: OnEvent) -> None:
        while self.closed is None:
            try:
                data = await self.stream.receive_some(self.limits.receive_chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            events = self.conn.receive_data(data)
            batch = self.batch
            if batch is None:
                for event in events:
                    await on_event(self, event)
                self.wake.set()
                continue
            batch.begin()
            try:
                for event in events:
                    await on_event(self, event)
            finally:
                batch.add(self)  # what the protocol answered by itself (pongs, acks)
                batch.end()

    async def _write(self, tree: trio.CancelScope) -> None:
        while True:
            out = self._take_output()
            if self._leftover:
                out, self._leftover = b"".join((self._leftover, out)), b""
            if out:
                self._writing = True
                with trio.move_on_after(self.limits.stuck_timeout) as timer:
                    try:
                        await self.stream.send_all(out)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        tree.cancel()  # it hung up; the reader may not have noticed yet
                        return
                    finally:
                        self._writing = False
                if timer.cancelled_caught:
                    self.cut_off("slow_consumer", f"a write took over {timer.deadline} s")
                    return
                self.room.set()
                continue
            if self.conn.state is State.CLOSED:
                tree.cancel()  # the close frame (if any) is out: hang up
                return
            await self.wake.wait()

    def _take_output(self) -> bytes:
        """Every byte due on the connection now, in order: the protocol's own replies,
        requests and replies for it, then a batch of deliveries."""
        conn = self.conn
        chunks = [conn.data_to_send()]
        if self.close_request is not None and conn.state in (State.HELLO, State.ESTABLISHED):
            chunks.append(conn.close(*self.close_request))
            self.closing_since = trio.current_time()
        if conn.state is not State.ESTABLISHED:
            self.control.clear()
            return b"".join(chunks)
        while self.control:
            chunks.append(_send_one(conn, self.control.popleft()))
        budget = self.limits.write_batch
        for queue in list(self.queues.values()):
            while budget and (entry := queue.take()) is not None:
                deliver = entry.value.body
                assert isinstance(deliver, m.Deliver)
                gap = entry.gap + entry.superseded
                body = replace(deliver, gap=gap) if gap else deliver
                try:
                    chunks.append(conn.send_deliver(body, entry.value.head))
                except LocalProtocolError as exc:  # e.g. over the peer's max_frame
                    log.warning("bus connection %d: not sent: %s", conn.connection_id, exc)
                budget -= 1
        if not budget:
            self.wake.set()  # more deliveries wait: come back after this write
        return b"".join(chunks)

    async def _watch(self) -> None:
        """The connection's deadlines: the hello, liveness (a peer that sends nothing,
        not even a ping, for `ping_timeout` is closed), the closing handshake, requests."""
        limits = self.limits
        opened = trio.current_time()
        while True:
            now = trio.current_time()
            conn = self.conn
            if conn.state is State.HELLO and now - opened >= limits.hello_timeout:
                self.request_close("hello_timeout", f"no hello within {limits.hello_timeout} s")
            if self.closing_since is not None and now - self.closing_since >= limits.close_grace:
                self.scope.cancel()  # the peer did not answer our close: hang up
                return
            heard = conn.last_received_us
            if conn.state is State.ESTABLISHED and heard is not None:
                silent = now - heard / 1_000_000
                if silent >= limits.ping_timeout and self.close_request is None:
                    self.request_close(
                        "ping_timeout", f"nothing received for {limits.ping_timeout:g} s"
                    )
            conn.tick(now_us())  # forget requests to it whose caller gave up
            wake = []
            if conn.state is State.HELLO and self.close_request is None:
                wake.append(opened + limits.hello_timeout)
            if self.closing_since is not None:
                wake.append(self.closing_since + limits.close_grace)
            if conn.next_deadline is not None:
                wake.append(conn.next_deadline / 1_000_000)
            if conn.state is State.ESTABLISHED and heard is not None:
                wake.append(heard / 1_000_000 + limits.ping_timeout)
            # The close request is seen by the writer, which sets closing_since; re-check
            # at least every close_grace so that a new closing deadline is noticed (and
            # no far deadline, a request's, holds back the others).
            wake.append(now + limits.close_grace)
            with trio.move_on_at(min(wake)):
                await trio.sleep_forever()


def _send_one(conn: Connection, message: m.Message) -> bytes:
    try:
        return conn.send(message)
    except LocalProtocolError as exc:  # e.g. too many requests pending on it
        log.warning("bus connection %d: not sent: %s", conn.connection_id, exc)
        return b""
