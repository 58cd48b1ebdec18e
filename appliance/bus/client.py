"""A trio client for the appliance's bus.

    async with open_client("/var/lib/appliance/run/bus.sock", token, name="sensor-1") as bus:
        await bus.publish("plant.line3.temp", b"21.5")
        async with await bus.subscribe("plant.>") as sub:
            async for message in sub:
                ...
        reply = await bus.request("svc.config.get", b"{}", timeout=2.0)
        await bus.serve("echo", handler)          # answers requests to svc.echo[.<method>]

`target` is a Unix socket path (or `unix:///path`) or `tcp://host:port`. The client's
reader runs in a nursery it is given (`BusClient.connect(nursery, ...)`) or that
`open_client` opens, so it never outlives its owner. It does not reconnect yet: when the
connection ends, pending requests and subscriptions raise `ConnectionClosed` with the
endpoint's reason.

    BusClientError
    ├── ConnectionClosed     the connection ended (`code`, `reason`, `text`)
    ├── ServiceError         raised by a handler: the error reply's text is `code: detail`
    └── RequestFailed        the reply was not ok (`status`, `text`)
        ├── NoResponders     nobody serves the topic (or the responder went away)
        └── RequestTimeout   no reply within the timeout (the endpoint's or ours)
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from appliance.bus import events as ev
from appliance.bus import messages as m
from appliance.bus.connection import Connection, State, _clip
from appliance.bus.reasons import BY_CODE, LocalProtocolError

if TYPE_CHECKING:
    from appliance.bus.client_streams import StreamReader, StreamWriter

DEFAULT_TIMEOUT = 10.0  # connecting, each write, a request without its own timeout
SUBSCRIPTION_BUFFER = 256  # delivered messages held for one subscription's iterator
PING_INTERVAL = 15.0  # seconds between keep-alive pings


class BusClientError(Exception):
    pass


class ConnectionClosed(BusClientError):
    def __init__(self, code: int, reason: str, text: str) -> None:
        super().__init__(f"{reason} ({code}): {text}" if text else f"{reason} ({code})")
        self.code, self.reason, self.text = code, reason, text


class ServiceError(BusClientError):
    """What a request handler raises to answer with an error reply whose text is exactly
    `<code>: <detail>` (any other exception answers `<ExceptionType>: <message>`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


class RequestFailed(BusClientError):
    def __init__(self, status: str, text: str) -> None:
        super().__init__(f"{status}: {text}" if text else status)
        self.status, self.text = status, text


class NoResponders(RequestFailed):
    pass


class RequestTimeout(RequestFailed):
    pass


@dataclass(frozen=True)
class BusMessage:
    """A message delivered to a subscription; `gap` messages were dropped before it."""

    topic: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    gap: int = 0
    retained: bool = False


@dataclass(frozen=True)
class IncomingRequest:
    topic: str
    data: bytes
    headers: dict[str, str]
    source: str | None
    deadline: float = math.inf  # trio time when the caller stops waiting


Handler = Callable[[IncomingRequest], Awaitable[bytes]]


class Subscription:
    """An async iterator of `BusMessage`; `aclose()` (or `async with`) unsubscribes."""

    def __init__(self, client: BusClient, sid: int) -> None:
        self._client = client
        self.sid = sid
        self._send, self._receive = trio.open_memory_channel[BusMessage](SUBSCRIPTION_BUFFER)
        self._error: BusClientError | None = None  # why it ended, if not by aclose()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusMessage:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._client._unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Waiter:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: m.Reply | None = None
        self.nodes: tuple[m.NodeRecord, ...] | None = None  # a query's answer


class BusClient:
    def __init__(self, stream: trio.abc.Stream, conn: Connection, nursery: trio.Nursery) -> None:
        self._stream = stream
        self._conn = conn
        self._nursery = nursery
        self._send_lock = trio.Lock()
        self._sids = itertools.count(1)
        self._ids = itertools.count(1)
        self._subscriptions: dict[int, Subscription] = {}
        self._handlers: dict[int, Handler] = {}
        self._waiters: dict[int, _Waiter] = {}
        self._queries: dict[int, _Waiter] = {}
        self._established = trio.Event()
        self._ended = trio.Event()
        self.closed: ConnectionClosed | None = None
        self.endpoint: m.NodeRecord | None = None
        from appliance.bus.client_streams import ClientStreams  # it imports this module

        self._streams = ClientStreams(self)

    @classmethod
    async def connect(
        cls,
        nursery: trio.Nursery,
        target: str | os.PathLike[str],
        token: str | None,
        *,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        will: m.Will | None = None,
    ) -> BusClient:
        """Connect, say hello and wait for the welcome (at most DEFAULT_TIMEOUT; wrap it
        in `trio.fail_after` for less); the reader runs in `nursery`. ConnectionClosed if
        the endpoint refuses (a bad token: `unauthenticated`)."""
        with trio.fail_after(DEFAULT_TIMEOUT):
            stream = await open_transport(target)
            return await cls.over(nursery, stream, token, name=name, labels=labels, will=will)

    @classmethod
    async def over(
        cls,
        nursery: trio.Nursery,
        stream: trio.abc.Stream,
        token: str | None,
        *,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        will: m.Will | None = None,
    ) -> BusClient:
        """`connect` over a stream already open (`BusEndpoint.connect_internal`'s)."""
        with trio.fail_after(DEFAULT_TIMEOUT):
            node = None
            if name is not None:
                host = m.Host(hostname=socket.gethostname() or "localhost", pid=os.getpid())
                node = m.NodeRecord(name=name, labels=labels or {}, host=host)
            client = cls(stream, Connection("client", manual_release=True), nursery)
            await client._write(client._conn.hello(token, node=node, will=will))
            nursery.start_soon(client._read)
            await client._established.wait()
        if client.closed is not None:
            raise client.closed
        nursery.start_soon(client._keep_alive)
        return client

    # --- the API -------------------------------------------------------------------------

    async def publish(
        self, topic: str, data: bytes = b"", *, retain: bool = False, headers=None
    ) -> None:
        await self._send(m.Publish(topic=topic, data=data, retain=retain, headers=headers or {}))

    async def subscribe(
        self, pattern: str, *, group: str | None = None, policy: str = "drop"
    ) -> Subscription:
        sub = Subscription(self, next(self._sids))
        self._subscriptions[sub.sid] = sub
        await self._send(m.Subscribe(sid=sub.sid, pattern=pattern, group=group, policy=policy))
        return sub

    async def request(
        self,
        topic: str,
        data: bytes = b"",
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - sent on the wire as timeout_us
        headers=None,
    ) -> bytes:
        """Call a service topic; its reply's data. RequestFailed (NoResponders,
        RequestTimeout) when the reply is not ok. `timeout` is the request's deadline,
        which the endpoint and the responder keep too (`timeout_us` on the wire)."""
        request_id = next(self._ids)
        waiter = self._waiters[request_id] = _Waiter()
        timeout_us = max(1, min(math.ceil(timeout * 1_000_000), m.MAX_TIMEOUT_US))
        try:
            await self._send(
                m.Request(
                    id=request_id,
                    topic=topic,
                    timeout_us=timeout_us,
                    data=data,
                    headers=headers or {},
                )
            )
            with trio.move_on_after(timeout + 1.0):  # the endpoint answers `timeout` first
                await waiter.done.wait()
        finally:
            self._waiters.pop(request_id, None)
            self._conn.tick()  # forget the request if it expired unanswered
        reply = waiter.reply
        if reply is None:
            if self.closed is not None:
                raise self.closed
            raise RequestTimeout("timeout", f"no reply to {topic} within {timeout} s")
        if reply.status == "ok":
            return reply.data
        error = {"no_responders": NoResponders, "timeout": RequestTimeout}
        raise error.get(reply.status, RequestFailed)(reply.status, reply.error or "")

    async def query(self, selector: str = "") -> tuple[m.NodeRecord, ...]:
        """The node records of the endpoint's connections whose labels match `selector`
        (`appliance.bus.selectors`; "" matches every node), within DEFAULT_TIMEOUT
        (trio.TooSlowError). A bad selector: the endpoint closes the connection."""
        query_id = next(self._ids)
        waiter = self._queries[query_id] = _Waiter()
        try:
            await self._send(m.Query(id=query_id, selector=selector))
            with trio.fail_after(DEFAULT_TIMEOUT):
                await waiter.done.wait()
        finally:
            self._queries.pop(query_id, None)
        if waiter.nodes is None:
            raise self.closed or ConnectionClosed(1, "going_away", "the connection is gone")
        return waiter.nodes

    async def serve(self, service: str, handler: Handler, *, group: str | None = None) -> None:
        """Answer requests to `svc.<service>` and `svc.<service>.<method...>` with
        `handler` (its return value is the reply's data; an exception, an error reply).
        Instances sharing `group` (default: the service name) share the calls."""
        for pattern in (f"svc.{service}", f"svc.{service}.>"):
            sid = next(self._sids)
            self._handlers[sid] = handler
            await self._send(m.Subscribe(sid=sid, pattern=pattern, group=group or service))

    async def open_stream(self, destination: str) -> StreamWriter:
        """Start a byte stream to node `destination` (relayed by the endpoint; see
        `appliance.bus.client_streams`)."""
        if self.closed is not None:
            raise self.closed
        return self._streams.open(destination)

    async def accept_stream(self) -> StreamReader:
        """The next stream another node sends to this one (waits; wrap it in a timeout)."""
        return await self._streams.accept()

    async def _stream_write(self, stream_id: int, data: bytes, *, fin: bool = False) -> int:
        if self.closed is not None:
            raise self.closed
        async with self._send_lock:
            taken = self._conn.stream_write(stream_id, data, fin=fin)
            await self._write_locked(self._conn.data_to_send())
        return taken

    async def _stream_control(self, change: Callable[[Connection], None]) -> None:
        """Apply a stream change (release, stop, reset) and send what it queued."""
        if self.closed is not None:
            return
        async with self._send_lock:
            change(self._conn)
            await self._write_locked(self._conn.data_to_send())

    async def _keep_alive(self) -> None:
        """A ping every PING_INTERVAL, so that the endpoint's liveness check
        (`ping_timeout`, 60 s) never closes an idle but healthy connection."""
        while self.closed is None:
            with trio.move_on_after(PING_INTERVAL):
                await self._ended.wait()
            if self._conn.state is not State.ESTABLISHED:
                return
            async with self._send_lock:
                with contextlib.suppress(ConnectionClosed):
                    await self._write_locked(self._conn.ping())

    async def wait_closed(self) -> ConnectionClosed:
        """Return once the connection is over, with why it ended."""
        await self._ended.wait()
        assert self.closed is not None
        return self.closed

    async def aclose(self) -> None:
        """Say goodbye (`normal`) and hang up."""
        if self._conn.state in (State.HELLO, State.ESTABLISHED):
            data = self._conn.close("normal", "client closing")
            with trio.move_on_after(1.0):
                await self._write(data)
        self._finish(ConnectionClosed(0, "normal", "closed by this client"))
        await trio.aclose_forcefully(self._stream)

    # --- the connection ------------------------------------------------------------------

    async def _send(self, body: m.Body) -> None:
        if self.closed is not None:
            raise self.closed
        async with self._send_lock:
            # Waiting for the lock, the reader may have seen the endpoint's close.
            if self.closed is not None:
                raise self.closed
            if self._conn.state in (State.CLOSING, State.CLOSED):  # its Closed event is next
                raise ConnectionClosed(1, "going_away", "the connection is closing")
            data = self._conn.send(body)  # everything queued so far, in order
            await self._write_locked(data)

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            await self._write_locked(data)

    async def _write_locked(self, data: bytes) -> None:
        if not data:
            return
        try:
            with trio.fail_after(DEFAULT_TIMEOUT):
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._finish(ConnectionClosed(1, "going_away", "the connection is gone"))
            raise self.closed from None  # type: ignore[misc]

    async def _read(self) -> None:
        try:
            while self._conn.state is not State.CLOSED:
                try:
                    data = await self._stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                for event in self._conn.receive_data(data):
                    await self._on_event(event)
                async with self._send_lock:  # pongs, acks, a close queued by receive_data
                    await self._write_locked(self._conn.data_to_send())
        except ConnectionClosed:
            pass
        finally:
            self._finish(self.closed or ConnectionClosed(1, "going_away", "the reader stopped"))
            await trio.aclose_forcefully(self._stream)

    async def _on_event(self, event: ev.Event) -> None:
        match event:
            case ev.Established(node=node):
                self.endpoint = node
                self._established.set()
            case ev.Delivered(head=head, deliver=d):
                sub = self._subscriptions.get(d.sid)
                if sub is not None:
                    message = BusMessage(d.topic, d.data, d.headers, head.source, d.gap, d.retained)
                    try:
                        sub._send.send_nowait(message)  # the common case: room in the buffer
                        return
                    except trio.WouldBlock:
                        pass
                    with trio.move_on_after(DEFAULT_TIMEOUT):
                        await sub._send.send(message)
                        return
                    # The iterator stopped taking: end it rather than drop silently.
                    self._subscriptions.pop(d.sid, None)
                    sub._error = BusClientError(f"not iterated for {DEFAULT_TIMEOUT} s")
                    sub._send.close()
            case ev.ReplyReceived(reply=reply):
                waiter = self._waiters.get(reply.id)
                if waiter is not None:
                    waiter.reply = reply
                    waiter.done.set()
            case ev.StreamData() | ev.StreamAcked() | ev.StreamReset() | ev.StreamStopped():
                self._streams.on_event(event)
            case ev.QueryAnswered(result=result):
                waiter = self._queries.get(result.id)
                if waiter is not None:
                    waiter.nodes = result.nodes
                    waiter.done.set()
            case ev.RequestReceived(head=head, request=request, deadline_us=deadline_us):
                handler = self._handlers.get(request.sid) if request.sid is not None else None
                self._nursery.start_soon(self._answer, handler, head, request, deadline_us)
            case ev.Closed(code=code, reason=reason, text=text):
                name = BY_CODE[code].name if code in BY_CODE else reason
                self._finish(ConnectionClosed(code, name, text))
            case _:
                pass

    async def _answer(
        self, handler: Handler | None, head: m.Head, request: m.Request, deadline_us: int
    ) -> None:
        if handler is None:
            reply = m.Reply(id=request.id, status="error", error="no handler")
        else:
            deadline = trio.current_time() + request.timeout_us / 1_000_000
            incoming = IncomingRequest(
                request.topic, request.data, request.headers, head.source, deadline
            )
            reply = None
            with trio.move_on_at(deadline):
                try:
                    reply = m.Reply(id=request.id, data=await handler(incoming))
                except Exception as exc:  # the handler's failure is the caller's answer
                    text = str(exc)
                    if not isinstance(exc, ServiceError):
                        text = f"{type(exc).__name__}: {text}"
                    reply = m.Reply(id=request.id, status="error", error=_clip(text))
            if reply is None:
                return  # the caller has stopped waiting; the endpoint answered `timeout`
        try:
            await self._send(reply)
        except LocalProtocolError as exc:  # e.g. a reply over the endpoint's max_frame
            error = _clip(f"reply_not_sent: {exc}")
            with contextlib.suppress(LocalProtocolError, ConnectionClosed):
                await self._send(m.Reply(id=request.id, status="error", error=error))
        except ConnectionClosed:
            pass

    def _finish(self, closed: ConnectionClosed) -> None:
        """The connection is over: wake everyone waiting on it."""
        if self.closed is None:
            self.closed = closed
        self._streams.close()
        self._established.set()
        self._ended.set()
        for waiter in (*self._waiters.values(), *self._queries.values()):
            waiter.done.set()
        for sub in self._subscriptions.values():
            sub._error = None if closed.code == 0 else closed
            sub._send.close()
        self._subscriptions.clear()

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subscriptions.pop(sub.sid, None) is not None and self.closed is None:
            await self._send(m.Unsubscribe(sid=sub.sid))
        sub._send.close()


@asynccontextmanager
async def open_client(
    target: str | os.PathLike[str], token: str | None, **options
) -> AsyncIterator[BusClient]:
    """`BusClient.connect` in a nursery of its own; closes the connection on exit. A
    refusal (ConnectionClosed), a timeout or a socket error is raised as it is."""
    refused: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            client = await BusClient.connect(nursery, target, token, **options)
        except (BusClientError, trio.TooSlowError, OSError) as exc:
            refused = exc
            nursery.cancel_scope.cancel()
        else:
            try:
                yield client
            finally:
                with trio.CancelScope(shield=True):
                    await client.aclose()
                nursery.cancel_scope.cancel()
    if refused is not None:
        raise refused


async def open_transport(target: str | os.PathLike[str]) -> trio.abc.Stream:
    text = os.fspath(target)
    if text.startswith("tcp://"):
        host, _, port = text.removeprefix("tcp://").rpartition(":")
        return await trio.open_tcp_stream(host.strip("[]"), int(port))
    return await trio.open_unix_socket(text.removeprefix("unix://"))
