"""Streams for the trio bus client: send a byte stream to a node, receive the ones sent to us.

    writer = await bus.open_stream("dashboard")        # through the endpoint's relay
    await writer.send(b"..." * 100_000)                # waits while the window is full
    await writer.finish()                              # returns when every byte is acknowledged

    reader = await bus.accept_stream()                 # the next stream sent to this node
    async for chunk in reader:                         # Chunk(offset, data), in order
        store(chunk.offset, chunk.data)

**Acknowledged after processing.** A chunk is released (acknowledged to the sender) when
the application asks for the next one, or calls `release()`, not when it arrives: if the
receiving process dies while handling a chunk, the endpoint still holds it and sends it
again when the node reconnects, from the last acknowledged offset. The resumed stream is
a new `StreamReader` whose `start_offset` says where it starts; `chunk.offset` lets a
receiver that stored part of a chunk before dying skip what it already has, so nothing
is lost or duplicated (`tests/bus/test_streams.py` kills a receiver to check).

Errors: `StreamStopped` (the receiver or the endpoint refused our stream: `reason` is a
close reason such as `no_destination` or `stream_expired`), `StreamReset` (the sender
went away before the end: `sender_gone`), both `BusClientError`s, and `ConnectionClosed`
when the stream's connection ends. Streams belong to one connection (`ClientStreams`, the
books of one): a reconnecting client does not carry them over; the endpoint resumes the
streams sent to it on the new connection, as new readers.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from appliance.bus import events as ev
from appliance.bus import messages as m
from appliance.bus.client import BusClientError
from appliance.bus.peer import Signal
from appliance.bus.reasons import LocalProtocolError

if TYPE_CHECKING:
    from appliance.bus.client import BusClient
    from appliance.bus.connection import Connection

INCOMING_STREAMS = 16  # streams sent to us and not yet accepted


class StreamError(BusClientError):
    def __init__(self, stream_id: int, reason: str, text: str) -> None:
        super().__init__(f"stream {stream_id}: {reason}: {text}" if text else reason)
        self.stream_id, self.reason, self.text = stream_id, reason, text


class StreamStopped(StreamError):
    pass


class StreamReset(StreamError):
    pass


@dataclass(frozen=True)
class Chunk:
    offset: int  # of data's first byte in the stream
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


class StreamWriter:
    def __init__(
        self, client: BusClient, books: ClientStreams, stream_id: int, destination: str
    ) -> None:
        self._client = client
        self._books = books
        self.stream_id = stream_id
        self.destination = destination
        self._acked = Signal()
        self._done = trio.Event()
        self.stopped: StreamStopped | None = None

    async def send(self, data: bytes, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Write all of `data`, waiting for acknowledgements while the window and the
        buffer are full (at most `timeout` per wait: trio.TooSlowError)."""
        view, position = memoryview(data), 0
        while position < len(data) or not data:
            self._raise_if_stopped()
            taken = await self._write(bytes(view[position:]))
            position += taken
            if position >= len(data):
                return
            with trio.fail_after(timeout):
                await self._acked.wait()

    async def finish(self, *, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """End the stream and wait until every byte is acknowledged."""
        self._raise_if_stopped()
        await self._write(b"", fin=True)
        with trio.fail_after(timeout):
            await self._done.wait()
        self._raise_if_stopped()

    async def reset(self, reason: str = "normal", text: str = "") -> None:
        """Abandon the stream (the receiver gets `reset_stream`)."""
        await self._client._stream_control(
            self._books, lambda conn: conn.stream_reset(self.stream_id, reason, text)
        )
        self._done.set()

    async def _write(self, data: bytes, *, fin: bool = False) -> int:
        try:
            return await self._client._stream_write(self._books, self.stream_id, data, fin=fin)
        except LocalProtocolError:  # stopped while this write waited for the connection
            self._raise_if_stopped()
            raise

    def _raise_if_stopped(self) -> None:
        if self.stopped is not None:
            raise self.stopped
        if self._books.gone is not None:
            raise self._books.gone

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.StreamAcked):
            self._acked.set()
            if event.done:
                self._done.set()
        elif isinstance(event, ev.StreamStopped):
            self.stopped = StreamStopped(event.stream_id, event.reason, event.text)
            self._acked.set()
            self._done.set()


class StreamReader:
    """A stream sent to us; iterate for `Chunk`s (each released when the next is asked)."""

    def __init__(self, client: BusClient, books: ClientStreams, data: ev.StreamData) -> None:
        self._client = client
        self._books = books
        self.stream_id = data.stream_id
        self.source = data.head.source
        self.start_offset = data.start_offset
        self._position = data.start_offset  # next byte to hand out
        self._released = data.start_offset
        self._readable = Signal()
        self.reset: StreamReset | None = None
        self._ended = False

    async def receive(self, max_bytes: int | None = None) -> Chunk | None:
        """The next chunk, or None at the stream's end (StreamReset if the sender went
        away first). Releases every chunk handed out before."""
        await self.release()
        conn = self._books.conn
        while True:
            if self._books.abandoned:  # the client reconnects: the stream comes again
                raise self._books.gone  # type: ignore[misc]
            receiver = conn.stream_receiving(self.stream_id)
            if receiver is None or receiver.finished:  # fully read and released: the end
                self._ended = True
                if self.reset is not None:
                    raise self.reset
                return None
            if receiver.readable:
                offset = receiver.taken
                data = conn.stream_read(self.stream_id, max_bytes)
                self._position = offset + len(data)
                return Chunk(offset, data)
            if self.reset is not None:
                self._ended = True
                raise self.reset
            if self._books.gone is not None:
                raise self._books.gone
            await self._readable.wait()

    async def release(self) -> None:
        """Acknowledge every chunk handed out so far (done with: not needed again)."""
        if self._position > self._released:
            self._released = self._position
            await self._client._stream_control(
                self._books, lambda conn: conn.stream_release(self.stream_id, self._released)
            )

    async def stop(self, reason: str = "normal", text: str = "") -> None:
        """Refuse the rest of the stream (the sender gets `stop_sending`)."""
        self._ended = True
        await self._client._stream_control(
            self._books, lambda conn: conn.stream_stop(self.stream_id, reason, text)
        )

    def __aiter__(self) -> StreamReader:
        return self

    async def __anext__(self) -> Chunk:
        chunk = await self.receive()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.StreamReset):
            self.reset = StreamReset(event.stream_id, event.reason, event.text)
        self._readable.set()


class ClientStreams:
    """One connection's books: its writers by id, readers by id, and the accept queue."""

    def __init__(self, client: BusClient, conn: Connection) -> None:
        self._client = client
        self.conn = conn
        self.gone: BusClientError | None = None  # the connection ended: why
        self.abandoned = False  # ...and the client reconnects: readers stop at once
        self._ids = itertools.count(1)
        self.writers: dict[int, StreamWriter] = {}
        self.readers: dict[int, StreamReader] = {}
        self._incoming_send, self._incoming = trio.open_memory_channel[StreamReader](
            INCOMING_STREAMS
        )

    def open(self, destination: str) -> StreamWriter:
        stream_id = next(self._ids)
        self.conn.open_stream(stream_id, head=m.Head(destination=destination))
        writer = StreamWriter(self._client, self, stream_id, destination)
        self.writers[stream_id] = writer
        return writer

    async def accept(self) -> StreamReader:
        try:
            return await self._incoming.receive()
        except trio.EndOfChannel:
            raise self.gone or StreamReset(0, "going_away", "closed") from None

    def on_event(self, event: ev.Event) -> None:
        """A stream event from the connection; never waits."""
        if isinstance(event, ev.StreamAcked | ev.StreamStopped):
            writer = self.writers.get(event.stream_id)
            if writer is not None:
                writer._on_event(event)
                if isinstance(event, ev.StreamStopped) or event.done:
                    del self.writers[event.stream_id]
        elif isinstance(event, ev.StreamData):
            reader = self.readers.get(event.stream_id)
            if reader is None:
                reader = StreamReader(self._client, self, event)
                try:
                    self._incoming_send.send_nowait(reader)
                except trio.WouldBlock:
                    self.conn.stream_stop(
                        event.stream_id, "limit_exceeded", f"{INCOMING_STREAMS} streams unaccepted"
                    )
                    return
                self.readers[event.stream_id] = reader
            reader._on_event(event)
        elif isinstance(event, ev.StreamReset):
            reader = self.readers.get(event.stream_id)
            if reader is not None:
                reader._on_event(event)

    def close(self, why: BusClientError, *, abandon: bool = False) -> None:
        """The connection is over: wake every waiter (they raise `why`). `abandon`: the
        client reconnects, and the endpoint sends the streams to it again from their
        acknowledged offsets, so what was received here is not read any further and the
        streams not yet accepted are dropped."""
        self.gone, self.abandoned = why, abandon
        if abandon:
            with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                while True:
                    self._incoming.receive_nowait()
        for writer in self.writers.values():
            writer._acked.set()
            writer._done.set()
        for reader in self.readers.values():
            reader._readable.set()
        self._incoming_send.close()
