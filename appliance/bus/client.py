"""A trio client for the appliance's bus.

    async with open_client("/var/lib/appliance/run/bus.sock", token, name="sensor-1") as bus:
        await bus.publish("plant.line3.temp", b"21.5")
        async with await bus.subscribe("plant.>") as sub:
            async for message in sub:
                ...
        reply = await bus.request("svc.config.get", b"{}", timeout=2.0)
        await bus.serve("echo", handler)          # answers requests to svc.echo[.<method>]
        await bus.register("sensor-1", labels={"line": "3"})   # name or relabel it later

`target` is a Unix socket path (or `unix:///path`) or `tcp://host:port`. The client's
tasks run in a nursery it is given (`BusClient.connect(nursery, ...)`) or that
`open_client` opens, so they never outlive their owner: a supervisor (`_run`) that serves
one connection at a time (its reader and keep-alive pings, in a cancel scope of their own)
and, with a reconnect policy, dials the next.

**Reconnecting** (`reconnect=True`, or a `ReconnectPolicy` from
`appliance.bus.client_reconnect`, which says which close reasons are retried and how the
jittered exponential backoff goes). After the first welcome, a connection that ends for
a reason that is not final (the endpoint restarted, a broken socket, `ping_timeout`,
`slow_consumer`, ...) is dialed again, and the client says hello with the same token, will
and node record (the last one it registered). Before anything else goes out on the new
connection it subscribes again, with the same sids and options, for its subscriptions and
served services, so iterators and handlers carry on. The first message a subscription gets
after a reconnection has `reconnected=True`: what was published while the client was away
is lost to it, and neither side can count it (retained values are sent again, as on any
subscribe). While the client is disconnected:

- requests and queries pending when the connection dropped fail with `ConnectionClosed`
  (its reason): they may or may not have been handled, so only the caller can retry;
- `publish`, `request`, `query`, `register` wait for the reconnection up to
  `policy.wait`, then raise `ConnectionClosed`; `subscribe`, `serve` and `aclose` of a
  subscription return at once (applied when the connection is back);
- streams are not resumed by the client: one being sent or received fails with
  `ConnectionClosed`, and `open_stream` raises it. The endpoint resumes streams *to* a
  node that comes back (`appliance.bus.relay`): they arrive as new readers from
  `accept_stream`, which keeps waiting across reconnections.

`connected`, `wait_connected()`, `wait_disconnected()`, `reconnects` (successful ones),
`reconnect_attempts` and `disconnected` (why the last connection or attempt ended) show
where it stands. `closed` is
set only when the client is over for good (a final reason, `aclose()`, `max_attempts`
used up) and `wait_closed()` waits for that. Without a policy the first end is final:
pending requests and subscriptions raise `ConnectionClosed` with the endpoint's reason.

    BusClientError
    ├── ConnectionClosed     the connection ended (`code`, `reason`, `text`)
    ├── ServiceError         raised by a handler: the error reply's text is `code: detail`
    └── RequestFailed        the reply was not ok (`status`, `text`)
        ├── NoResponders     nobody serves the topic (or the responder went away)
        └── RequestTimeout   no reply within the timeout (the endpoint's or ours)

Longer than our 400-line aim because a client is one piece: every API call goes through
the same connection state (connected, dropped, reconnecting, over) and one send lock; the
parts that are not about that state live in `client_streams` and `client_reconnect`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from appliance.bus import events as ev
from appliance.bus import messages as m
from appliance.bus.client_reconnect import ReconnectPolicy, retryable
from appliance.bus.connection import Connection, State, _clip
from appliance.bus.reasons import BY_CODE, LocalProtocolError

if TYPE_CHECKING:
    from appliance.bus.client_streams import ClientStreams, StreamReader, StreamWriter

log = logging.getLogger("appliance.bus.client")

DEFAULT_TIMEOUT = 10.0  # connecting, each write, a request without its own timeout
SUBSCRIPTION_BUFFER = 256  # delivered messages held for one subscription's iterator
YIELD_EVERY = 64  # buffered messages an iterator returns before letting other tasks run
PING_INTERVAL = 15.0  # seconds between keep-alive pings
BROKEN_WAIT = 1.0  # a write that broke waits this long for the reader to learn why

Redial = Callable[[], Awaitable[trio.abc.Stream]]


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
    """A message delivered to a subscription; `gap` messages were dropped before it (a
    slow consumer), and `reconnected` says it is the first since the client reconnected:
    an unknown number of messages may have been missed while it was away."""

    topic: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    gap: int = 0
    retained: bool = False
    reconnected: bool = False


@dataclass(frozen=True)
class IncomingRequest:
    topic: str
    data: bytes
    headers: dict[str, str]
    source: str | None
    deadline: float = math.inf  # trio time when the caller stops waiting


Handler = Callable[[IncomingRequest], Awaitable[bytes]]


class Subscription:
    """An async iterator of `BusMessage`; `aclose()` (or `async with`) unsubscribes. It
    lives as long as the client, across reconnections."""

    def __init__(self, client: BusClient, sid: int) -> None:
        self._client = client
        self.sid = sid
        self._send, self._receive = trio.open_memory_channel[BusMessage](SUBSCRIPTION_BUFFER)
        self._error: BusClientError | None = None  # why it ended, if not by aclose()
        self._missed = False  # the connection dropped since its last message
        self._unyielded = 0  # messages returned since the iterator last let others run

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> BusMessage:
        # A message already buffered is taken without a task switch, up to YIELD_EVERY
        # in a row (cancellation is still seen at once): one switch per message would
        # make the reader and the iterator take turns message by message.
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._unyielded < YIELD_EVERY:
            try:
                message = self._receive.receive_nowait()
            except trio.WouldBlock:
                pass
            except trio.EndOfChannel:
                raise self._ended() from None
            else:
                self._unyielded += 1
                return message
        self._unyielded = 0
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise self._ended() from None

    def _ended(self) -> BaseException:
        return self._error if self._error is not None else StopAsyncIteration()

    async def aclose(self) -> None:
        await self._client._unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Waiter:
    """A request's or query's caller, waiting for the answer on the connection it went
    out on (`link`); `error` when that connection ended first."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.link: _Link | None = None
        self.error: ConnectionClosed | None = None
        self.reply: m.Reply | None = None
        self.nodes: tuple[m.NodeRecord, ...] | None = None  # a query's answer

    def sent_on(self, link: _Link) -> None:
        """(Again) on `link`: a connection that broke under the first try failed it."""
        self.link, self.error = link, None
        if self.done.is_set():
            self.done = trio.Event()


class _Link:
    """One connection of the client; a reconnecting client has one after another."""

    def __init__(self, client: BusClient, stream: trio.abc.Stream) -> None:
        from appliance.bus.client_streams import ClientStreams  # it imports this module

        self.stream = stream
        self.conn = Connection("client", manual_release=True)
        self.streams: ClientStreams = ClientStreams(client, self.conn)
        self.scope = trio.CancelScope()  # its reader and pings; cancelled when it ends
        self.established = trio.Event()  # the welcome came, or the link ended first
        self.ended = trio.Event()
        self.up = False  # subscriptions restored: the client sends on it
        self.closed: ConnectionClosed | None = None  # why it ended (or is ending)
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        # Bytes taken from `conn` and not yet written, in order (`BusClient._write_soon`);
        # `taken` and `sent` count the bytes that ever went in and out of it.
        self.out: list[bytes] = []
        self.taken = 0
        self.sent = 0

    def add_out(self, data: bytes) -> int:
        """Queue `data` to be written next; returns the count `sent` reaches with it."""
        self.out.append(data)
        self.taken += len(data)
        return self.taken

    def take_out(self) -> bytes:
        out = b"".join(self.out) if len(self.out) != 1 else self.out[0]
        self.out.clear()
        return out

    def fd(self) -> int:
        """The socket's descriptor for writes that do not wait; -1 for other streams and
        once the socket is closed."""
        return -1 if self._socket is None else self._socket.fileno()


class BusClient:
    def __init__(
        self,
        nursery: trio.Nursery,
        stream: trio.abc.Stream,
        *,
        token: str | None = None,
        node: m.NodeRecord | None = None,
        will: m.Will | None = None,
        policy: ReconnectPolicy | None = None,
        redial: Redial | None = None,
    ) -> None:
        self._nursery = nursery
        self._token, self._node, self._will = token, node, will
        self._policy, self._redial = policy, redial
        self._send_lock = trio.Lock()
        self._sids = itertools.count(1)
        self._ids = itertools.count(1)
        self._subscriptions: dict[int, Subscription] = {}
        self._handlers: dict[int, Handler] = {}
        self._subscribes: dict[int, m.Subscribe] = {}  # every live sid's: what to restore
        self._waiters: dict[int, _Waiter] = {}
        self._queries: dict[int, _Waiter] = {}
        self._link = _Link(self, stream)
        self._change = trio.Event()  # set (and replaced) whenever the state changes
        self._ended = trio.Event()
        self._ever_up = False
        self.closed: ConnectionClosed | None = None
        self.disconnected: ConnectionClosed | None = None
        self.endpoint: m.NodeRecord | None = None
        self.reconnects = 0
        self.reconnect_attempts = 0

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
        reconnect: ReconnectPolicy | bool = False,
    ) -> BusClient:
        """Connect, say hello and wait for the welcome (at most DEFAULT_TIMEOUT; wrap it
        in `trio.fail_after` for less); the client's tasks run in `nursery`.
        ConnectionClosed if the endpoint refuses (a bad token: `unauthenticated`). With
        `reconnect`, a connection lost later is dialed again (the first must succeed)."""
        with trio.fail_after(DEFAULT_TIMEOUT):
            stream = await open_transport(target)
            return await cls.over(
                nursery,
                stream,
                token,
                name=name,
                labels=labels,
                will=will,
                reconnect=reconnect,
                redial=functools.partial(open_transport, target),
            )

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
        reconnect: ReconnectPolicy | bool = False,
        redial: Redial | None = None,
    ) -> BusClient:
        """`connect` over a stream already open (`BusEndpoint.connect_internal`'s); to
        reconnect, `redial` opens the next one."""
        policy = ReconnectPolicy() if reconnect is True else reconnect or None
        if policy is not None and redial is None:
            raise ValueError("a reconnecting client needs redial, to open the next stream")
        node = None if name is None else m.NodeRecord(name=name, labels=labels or {}, host=_host())
        client = cls(
            nursery, stream, token=token, node=node, will=will, policy=policy, redial=redial
        )
        nursery.start_soon(client._run)
        try:
            with trio.fail_after(DEFAULT_TIMEOUT):
                await client._say_hello(client._link)
                await client.wait_connected()
        except trio.TooSlowError:
            client._finish(ConnectionClosed(1, "going_away", "no welcome in time"))
            raise
        return client

    # --- the API -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Established and restored: what is sent now goes out now."""
        link = self._link
        return link.up and self._usable(link)

    @property
    def node(self) -> m.NodeRecord | None:
        """The node record this client holds: its hello's, or the last `register`ed."""
        return self._node

    async def wait_connected(self) -> None:
        """Return once the client is connected (at once if it is); the final
        ConnectionClosed if it is over. Wrap it in `trio.fail_after` to bound it."""
        while not self.connected:
            if self.closed is not None:
                raise self.closed
            await self._change.wait()

    async def wait_disconnected(self) -> ConnectionClosed:
        """Return once the client is not connected (at once if it is not), with why the
        last connection ended (for a client that is over: why it is over)."""
        while self.connected:
            await self._change.wait()
        return self.closed or self.disconnected or self._gone()

    async def publish(
        self, topic: str, data: bytes = b"", *, retain: bool = False, headers=None
    ) -> None:
        await self._send(m.Publish(topic=topic, data=data, retain=retain, headers=headers or {}))

    async def subscribe(
        self, pattern: str, *, group: str | None = None, policy: str = "drop"
    ) -> Subscription:
        sub = Subscription(self, next(self._sids))
        self._subscriptions[sub.sid] = sub  # before the subscribe: retained values follow it
        try:
            await self._add_subscription(
                m.Subscribe(sid=sub.sid, pattern=pattern, group=group, policy=policy)
            )
        except BaseException:
            self._subscriptions.pop(sub.sid, None)
            raise
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
        request = m.Request(
            id=request_id, topic=topic, timeout_us=timeout_us, data=data, headers=headers or {}
        )
        try:
            await self._send(request, waiter=waiter)
            with trio.move_on_after(timeout + 1.0):  # the endpoint answers `timeout` first
                await waiter.done.wait()
        finally:
            self._waiters.pop(request_id, None)
            if waiter.link is not None and waiter.reply is None:
                waiter.link.conn.tick()  # forget the request if it expired unanswered
        reply = waiter.reply
        if reply is None:
            if waiter.error is not None:
                raise waiter.error
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
            await self._send(m.Query(id=query_id, selector=selector), waiter=waiter)
            with trio.fail_after(DEFAULT_TIMEOUT):
                await waiter.done.wait()
        finally:
            self._queries.pop(query_id, None)
        if waiter.nodes is None:
            raise waiter.error or self.closed or self._gone()
        return waiter.nodes

    async def register(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        version: str | None = None,
        metadata: m.Metadata | None = None,
    ) -> None:
        """Name this connection `name` in discovery after the hello, or update its labels
        (`docs/bus-protocol.md` §4.11). One name per connection: another name replaces
        the one it held. There is no answer on the wire; a `query` after it sees it. A
        name another connection holds: the endpoint closes this one with `name_taken`."""
        node = m.NodeRecord(
            name=name, version=version, labels=labels or {}, metadata=metadata, host=_host()
        )
        await self._send(m.Register(node=node))
        self._node = node  # the hello of a reconnection says it

    async def deregister(self) -> None:
        """Give up this connection's node name (nothing to do if it holds none)."""
        node = self._node
        if node is not None:
            await self._send(m.Deregister(name=node.name))
            self._node = None

    async def serve(self, service: str, handler: Handler, *, group: str | None = None) -> None:
        """Answer requests to `svc.<service>` and `svc.<service>.<method...>` with
        `handler` (its return value is the reply's data; an exception, an error reply).
        Instances sharing `group` (default: the service name) share the calls."""
        for pattern in (f"svc.{service}", f"svc.{service}.>"):
            sid = next(self._sids)
            self._handlers[sid] = handler
            await self._add_subscription(
                m.Subscribe(sid=sid, pattern=pattern, group=group or service)
            )

    async def open_stream(self, destination: str) -> StreamWriter:
        """Start a byte stream to node `destination` (relayed by the endpoint; see
        `appliance.bus.client_streams`). Not while disconnected: ConnectionClosed."""
        if not self.connected:
            raise self.closed or self._gone()
        return self._link.streams.open(destination)

    async def accept_stream(self) -> StreamReader:
        """The next stream another node sends to this one (waits; wrap it in a timeout),
        across reconnections."""
        while True:
            books = self._link.streams
            try:
                return await books.accept()
            except BusClientError:
                if not self._reconnecting():
                    raise
            while self._link.streams is books:  # the next connection's
                if self.closed is not None:
                    raise self.closed
                await self._change.wait()

    async def wait_closed(self) -> ConnectionClosed:
        """Return once the client is over (a reconnecting one: for good), with why."""
        await self._ended.wait()
        assert self.closed is not None
        return self.closed

    async def aclose(self) -> None:
        """Say goodbye (`normal`) and hang up; a reconnecting client stops reconnecting."""
        link = self._link
        alive = not link.ended.is_set() and link.conn.state in (State.HELLO, State.ESTABLISHED)
        if self.closed is None and alive:
            data = link.conn.close("normal", "client closing")
            with trio.move_on_after(1.0), contextlib.suppress(ConnectionClosed):
                await self._write(link, data)
        self._finish(ConnectionClosed(0, "normal", "closed by this client"))
        await trio.aclose_forcefully(link.stream)

    # --- streams (client_streams calls these with the books of the stream's connection) ---

    async def _stream_write(
        self, books: ClientStreams, stream_id: int, data: bytes, *, fin: bool = False
    ) -> int:
        async with self._send_lock:
            link = self._link
            if books is not link.streams or not self._usable(link):
                raise books.gone or self.closed or self._gone()
            taken = link.conn.stream_write(stream_id, data, fin=fin)
            await self._write_locked(link, link.conn.data_to_send())
        return taken

    async def _stream_control(
        self, books: ClientStreams, change: Callable[[Connection], None]
    ) -> None:
        """Apply a stream change (release, stop, reset) and send what it queued; nothing
        once the stream's connection is gone."""
        async with self._send_lock:
            link = self._link
            if books is not link.streams or not self._usable(link):
                return
            change(link.conn)
            await self._write_locked(link, link.conn.data_to_send())

    # --- sending -------------------------------------------------------------------------

    async def _send(self, body: m.Body, *, waiter: _Waiter | None = None) -> None:
        """Send on the current connection; while a reconnecting client is disconnected,
        wait for the next one up to `policy.wait`. A write that breaks is tried again on
        the next connection (the endpoint drops a frame cut short: never twice)."""
        deadline: float | None = None
        while True:
            if self.closed is not None:
                raise self.closed
            if self.connected and not self._send_lock.locked() and self._link.fd() >= 0:
                await trio.lowlevel.checkpoint_if_cancelled()  # raises, never waits
                link = self._link
                if waiter is not None:
                    waiter.sent_on(link)
                try:
                    await self._write_soon(link, link.conn.send(body))
                    return
                except ConnectionClosed:
                    if not self._reconnecting():
                        raise
            elif self.connected:
                async with self._send_lock:
                    link = self._link
                    if self.closed is not None:
                        raise self.closed
                    if self.connected:
                        if waiter is not None:
                            waiter.sent_on(link)
                        try:
                            await self._write_locked(link, link.conn.send(body))
                            return
                        except ConnectionClosed:
                            if not self._reconnecting():
                                raise
            if not self._reconnecting():
                raise self._link.closed or self._gone()
            assert self._policy is not None
            if deadline is None:
                deadline = trio.current_time() + self._policy.wait
            elif trio.current_time() >= deadline:
                why = self.disconnected or self._gone()
                text = f"not reconnected within {self._policy.wait:g} s ({why.text})"
                raise ConnectionClosed(why.code, why.reason, text)
            with trio.move_on_at(deadline):
                await self._change.wait()

    async def _send_on(self, link: _Link, body: m.Body) -> None:
        """Send on `link` only: a reply goes back on the connection its request came on."""
        if not self._send_lock.locked() and self._usable(link) and link.fd() >= 0:
            await trio.lowlevel.checkpoint_if_cancelled()  # raises, never waits
            await self._write_soon(link, link.conn.send(body))
            return
        async with self._send_lock:
            if not self._usable(link):
                raise link.closed or self._gone()
            await self._write_locked(link, link.conn.send(body))

    async def _add_subscription(self, subscribe: m.Subscribe) -> None:
        """Record a subscription (restored on every reconnection) and send it if
        connected; a reconnecting client that is not sends it on the reconnection."""
        async with self._send_lock:
            if self.closed is not None:
                raise self.closed
            self._subscribes[subscribe.sid] = subscribe
            link = self._link
            try:
                if not self.connected:
                    raise link.closed or self._gone()
                await self._write_locked(link, link.conn.send(subscribe))
            except ConnectionClosed:
                if not self._reconnecting():
                    del self._subscribes[subscribe.sid]
                    raise

    async def _unsubscribe(self, sub: Subscription) -> None:
        try:
            async with self._send_lock:
                self._subscriptions.pop(sub.sid, None)
                if self._subscribes.pop(sub.sid, None) is not None and self.connected:
                    link = self._link
                    with contextlib.suppress(ConnectionClosed):  # then it is gone anyway
                        await self._write_locked(link, link.conn.send(m.Unsubscribe(sid=sub.sid)))
        finally:
            sub._send.close()

    async def _say_hello(self, link: _Link) -> None:
        await self._write(link, link.conn.hello(self._token, node=self._node, will=self._will))

    async def _write(self, link: _Link, data: bytes) -> None:
        async with self._send_lock:
            await self._write_locked(link, data)

    async def _write_soon(self, link: _Link, data: bytes) -> None:
        """Write `data`, just taken from `link.conn` while the send lock was free (and
        nothing waited since), together with what other tasks take meanwhile: it joins
        the link's outgoing bytes (`_Link.out`), the task lets the others run once, and
        the first to come back writes everything pending in one write, without a lock,
        a cancel scope or a task switch when the socket takes it at once; the rest is
        written holding the lock (`_write_locked`). Returns once `data` is written. One
        checkpoint, never cancelled once `data` is taken, as a trio socket write has."""
        mine = link.add_out(data)
        await trio.lowlevel.cancel_shielded_checkpoint()
        while link.sent < mine:
            if link.ended.is_set():
                raise link.closed or self._gone()
            if self._send_lock.locked():  # a write that had to wait: take turns
                with trio.CancelScope(shield=True):  # bounded: each write has a timeout
                    async with self._send_lock:
                        await self._write_locked(link)
                continue
            pending = link.take_out()
            if not pending:  # taken by a write that failed: it ended the link
                raise link.closed or self._gone()
            try:
                written = os.write(link.fd(), pending)
            except BlockingIOError:
                written = 0
            except OSError:  # broken, or closed meanwhile
                # The endpoint hung up: its reader is about to learn why (its close
                # frame, e.g. `forbidden`, or the end of the stream): the caller hears it.
                with trio.move_on_after(BROKEN_WAIT):
                    await link.ended.wait()
                raise self._end_link(link, self._gone()) from None
            link.sent += written
            if written < len(pending):
                link.out.append(pending[written:])  # first: nothing was added since
                self._send_lock.acquire_nowait()  # free: checked, and nothing waited since
                try:
                    await self._write_locked(link)
                finally:
                    self._send_lock.release()

    async def _write_locked(self, link: _Link, data: bytes = b"") -> None:
        """Holding the send lock: write what other tasks left pending on `link` (taken
        before `data`, so it goes first), then `data`."""
        if data:
            link.add_out(data)
        if not link.out:
            return
        if link.ended.is_set():
            raise link.closed or self._gone()
        pending = link.take_out()
        try:
            with trio.fail_after(DEFAULT_TIMEOUT):
                await link.stream.send_all(pending)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._end_link(link, self._gone()) from None
        except BaseException:
            # Timed out or cancelled mid-write: part of a frame may be on the wire, and the
            # bytes taken are lost to the tasks waiting for `sent` to pass theirs. The
            # connection cannot be used any more; ending it tells them (and reconnects).
            self._end_link(link, ConnectionClosed(1, "going_away", "a write did not finish"))
            raise
        link.sent += len(pending)

    # --- the connections -----------------------------------------------------------------

    async def _run(self) -> None:
        """The supervisor: serve the connection, and while the client is not over, dial
        the next one after the policy's backoff."""
        link = self._link
        delays: Iterator[float] = iter(())
        attempts = 0
        while True:
            await self._serve(link)
            if self.closed is not None:
                return
            assert self._policy is not None and self._redial is not None  # else it was final
            if link.up:  # a drop, not a failed attempt: back off afresh
                delays, attempts = self._policy.delays(), 0
            stream = None
            while stream is None:
                delay = next(delays, None)
                if delay is None:
                    why = self.disconnected or self._gone()
                    text = f"gave up reconnecting after {attempts} attempts: {why.text}"
                    self._finish(ConnectionClosed(why.code, why.reason, text))
                    return
                with trio.move_on_after(delay):
                    await self._ended.wait()
                if self.closed is not None:
                    return
                attempts += 1
                self.reconnect_attempts += 1
                try:
                    with trio.fail_after(DEFAULT_TIMEOUT):
                        stream = await self._redial()
                except (OSError, trio.TooSlowError) as exc:
                    text = f"cannot reconnect: {exc or type(exc).__name__}"
                    self.disconnected = ConnectionClosed(1, "going_away", text)
                    self._notify()
            if self.closed is not None:
                await trio.aclose_forcefully(stream)
                return
            link = self._link = _Link(self, stream)
            self._notify()  # accept_stream moves to its books
            with contextlib.suppress(ConnectionClosed):  # then `_serve` returns at once
                await self._say_hello(link)

    async def _serve(self, link: _Link) -> None:
        with link.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_alive, link)
                nursery.start_soon(self._restore, link)
                await self._read(link)
                nursery.cancel_scope.cancel()

    async def _restore(self, link: _Link) -> None:
        """Once the welcome came: subscribe again (same sids and options), then let
        everything else through (`connected`)."""
        await link.established.wait()
        async with self._send_lock:
            if not self._usable(link):
                return
            data = b"".join(link.conn.send(s) for _, s in sorted(self._subscribes.items()))
            try:
                await self._write_locked(link, data)
            except ConnectionClosed:
                return
            link.up = True
            if self._ever_up:
                self.reconnects += 1
                log.info("bus client reconnected (%d subscriptions)", len(self._subscribes))
            self._ever_up = True
        self._notify()

    async def _keep_alive(self, link: _Link) -> None:
        """A ping every PING_INTERVAL, so that the endpoint's liveness check
        (`ping_timeout`, 60 s) never closes an idle but healthy connection."""
        await link.established.wait()
        while True:
            await trio.sleep(PING_INTERVAL)
            async with self._send_lock:
                if not self._usable(link):
                    return
                with contextlib.suppress(ConnectionClosed):
                    await self._write_locked(link, link.conn.ping())

    async def _read(self, link: _Link) -> None:
        try:
            while link.conn.state is not State.CLOSED:
                try:
                    data = await link.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                for event in link.conn.receive_data(data):
                    await self._on_event(link, event)
                if link.conn.has_data_to_send:  # pongs, acks, a close queued by receive_data
                    async with self._send_lock:
                        await self._write_locked(link, link.conn.data_to_send())
        except ConnectionClosed:
            pass
        finally:
            stopped = ConnectionClosed(1, "going_away", "the reader stopped")
            self._end_link(link, link.closed or stopped)
            await trio.aclose_forcefully(link.stream)

    async def _on_event(self, link: _Link, event: ev.Event) -> None:
        match event:
            case ev.Established(node=node):
                self.endpoint = node
                link.established.set()
            case ev.Delivered(head=head, deliver=d):
                sub = self._subscriptions.get(d.sid)
                if sub is not None:
                    message = BusMessage(
                        d.topic, d.data, d.headers, head.source, d.gap, d.retained, sub._missed
                    )
                    sub._missed = False
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
                    self._subscribes.pop(d.sid, None)
                    sub._error = BusClientError(f"not iterated for {DEFAULT_TIMEOUT} s")
                    sub._send.close()
            case ev.ReplyReceived(reply=reply):
                waiter = self._waiters.get(reply.id)
                if waiter is not None and waiter.link is link:
                    waiter.reply = reply
                    waiter.done.set()
            case ev.StreamData() | ev.StreamAcked() | ev.StreamReset() | ev.StreamStopped():
                link.streams.on_event(event)
            case ev.QueryAnswered(result=result):
                waiter = self._queries.get(result.id)
                if waiter is not None and waiter.link is link:
                    waiter.nodes = result.nodes
                    waiter.done.set()
            case ev.RequestReceived(head=head, request=request):
                handler = self._handlers.get(request.sid) if request.sid is not None else None
                self._nursery.start_soon(self._answer, link, handler, head, request)
            case ev.Closed(code=code, reason=reason, text=text):
                name = BY_CODE[code].name if code in BY_CODE else reason
                link.closed = link.closed or ConnectionClosed(code, name, text)
            case _:
                pass

    async def _answer(
        self, link: _Link, handler: Handler | None, head: m.Head, request: m.Request
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
            await self._send_on(link, reply)
        except LocalProtocolError as exc:  # e.g. a reply over the endpoint's max_frame
            error = _clip(f"reply_not_sent: {exc}")
            with contextlib.suppress(LocalProtocolError, ConnectionClosed):
                await self._send_on(link, m.Reply(id=request.id, status="error", error=error))
        except ConnectionClosed:
            pass  # the request went with its connection; the caller was told

    # --- state ---------------------------------------------------------------------------

    def _usable(self, link: _Link) -> bool:
        return link is self._link and link.closed is None and link.conn.state is State.ESTABLISHED

    def _reconnecting(self) -> bool:
        """Will (or does) this client dial again rather than end?"""
        return self._policy is not None and self._ever_up and self.closed is None

    def _gone(self) -> ConnectionClosed:
        return ConnectionClosed(1, "going_away", "the connection is gone")

    def _notify(self) -> None:
        self._change.set()
        self._change = trio.Event()

    def _end_link(self, link: _Link, why: ConnectionClosed) -> ConnectionClosed:
        """A connection is over: fail what waited on it; the client carries on (to
        reconnect) or is over too (`_finish`). Returns why it ended."""
        if link.closed is None:
            link.closed = why
        why = link.closed
        if link.ended.is_set():
            return why
        link.ended.set()
        link.established.set()
        link.scope.cancel()
        self.disconnected = why
        resumable = self._reconnecting() and retryable(why.reason)
        for waiter in (*self._waiters.values(), *self._queries.values()):
            if waiter.link is link and not waiter.done.is_set():
                waiter.error = why
                waiter.done.set()
        link.streams.close(why, abandon=resumable)
        if resumable and link.up:
            log.warning("bus client disconnected (%s); reconnecting", why)
            for sub in self._subscriptions.values():
                sub._missed = True
        elif not resumable and self.closed is None:
            self._finish(why)
        self._notify()
        return why

    def _finish(self, closed: ConnectionClosed) -> None:
        """The client is over: wake everyone waiting on it."""
        if self.closed is None:
            self.closed = closed
        self._end_link(self._link, self.closed)
        self._ended.set()
        for waiter in (*self._waiters.values(), *self._queries.values()):
            if not waiter.done.is_set():
                waiter.error = self.closed
                waiter.done.set()
        for sub in self._subscriptions.values():
            sub._error = None if self.closed.code == 0 else self.closed
            sub._send.close()
        self._subscriptions.clear()
        self._subscribes.clear()
        self._notify()


def _host() -> m.Host:
    return m.Host(hostname=socket.gethostname() or "localhost", pid=os.getpid())


@asynccontextmanager
async def open_client(
    target: str | os.PathLike[str], token: str | None, **options
) -> AsyncIterator[BusClient]:
    """`BusClient.connect` in a nursery of its own (`options`: name, labels, will,
    reconnect); closes the connection on exit. A refusal (ConnectionClosed), a timeout or
    a socket error is raised as it is."""
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
