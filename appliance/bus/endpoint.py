"""The bus endpoint: trio servers on a Unix socket and TCP that drive the sans-IO parts.

    endpoint = BusEndpoint(authenticate=token_authenticator(tokens), node=..., unix_path=...)
    addresses = await nursery.start(endpoint.serve)   # listening on both
    ...
    await endpoint.stop()                             # close every connection: going_away

This module only moves bytes and waits: `Connection` decides what the bytes mean, `Router`
who gets what, `SubscriberQueue` what a slow consumer loses. Each connection is one task
tree inside the endpoint's nursery:

    connection nursery
    ├── reader   receive_some (bounded) -> Connection.receive_data -> act via the Router
    ├── writer   the only task that takes bytes out of the Connection and writes them
    └── timer    hello deadline, the closing handshake's deadline, Connection.tick

**One writer.** `Connection.send` and `close` hand back everything queued so far, so the
bytes must be written in the order they were taken. Instead of a lock around "take and
write", a single writer task per connection takes and writes; everybody else queues work
for it (a control queue for requests and replies, a `SubscriberQueue` per subscription
for deliveries) and wakes it.

**Bounded everything.** A delivery goes into its subscription's `SubscriberQueue` with the
policy the subscriber chose: `drop` and `latest` never wait; `block` makes the publisher
(its reader task) wait for room, at most `stuck_timeout`. A consumer is disconnected with
`slow_consumer` when a write to it does not complete within `stuck_timeout` (it stopped
reading), when a `block` publisher waited for it that long, or when its control queue
overflows. A cut-off consumer gets no close frame: a write may have stopped mid-frame, and
it is not reading anyway.

**Stop.** `stop()` stops accepting, sends `close` with `going_away` on every connection,
waits up to `close_grace` for the peers to hang up, then cancels what is left and removes
the Unix socket file. Last wills are published when a connection ends (`Closed.will_due`,
or cut off), except while the endpoint stops: every subscriber is being disconnected too.

Not yet: liveness (`ping_timeout`), routing streams between clients, `register` and
`deregister` (node names come from the hello), links to other endpoints. Longer than our
400-line aim; the per-connection part (`_Peer` and its reader, writer and timer) is the
piece to move out when links arrive.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import socket
import stat
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from appliance.bus import events as ev
from appliance.bus import messages as m
from appliance.bus.codec import DEFAULT_MAX_BAD_CRC, DEFAULT_MAX_FRAME
from appliance.bus.connection import Connection, State
from appliance.bus.flow import Offer, SlowConsumer, SubscriberQueue
from appliance.bus.principal import Authenticate
from appliance.bus.reasons import LocalProtocolError
from appliance.bus.retained import RetainedStore
from appliance.bus.router import Delivery, RouteError, Router, Send
from appliance.bus.selectors import SelectorError
from appliance.bus.topics import TopicError

log = logging.getLogger("appliance.bus")


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


@dataclass(frozen=True)
class Addresses:
    """Where the endpoint listens: `unix` a path, `tcp` a `tcp://host:port` URL."""

    unix: str | None
    tcp: str | None


class _Signal:
    """A level-triggered wake-up: `set` any number of times, `wait` returns once per burst."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class _Peer:
    """One connection's state beyond the protocol: its queues and its task tree's scope."""

    def __init__(self, conn: Connection, stream: trio.abc.Stream, limits: Limits) -> None:
        self.conn = conn
        self.stream = stream
        self.limits = limits
        self.queues: dict[int, SubscriberQueue[m.Message]] = {}
        self.control: deque[m.Message] = deque()
        self.wake = _Signal()  # the writer has work
        self.room = _Signal()  # the writer took deliveries: block publishers may retry
        self.scope = trio.CancelScope()
        self.established = False
        self.will: m.Will | None = None
        self.close_request: tuple[str, str] | None = None
        self.closing_since: float | None = None
        self.closed: ev.Closed | None = None
        self.cut: str | None = None  # cut off without a close frame: why

    @property
    def id(self) -> int:
        return self.conn.connection_id

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
        self.wake.set()

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


class BusEndpoint:
    def __init__(
        self,
        *,
        authenticate: Authenticate,
        node: m.NodeRecord,
        unix_path: Path | None = None,
        tcp: tuple[str, int] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_bad_crc: int = DEFAULT_MAX_BAD_CRC,
        limits: Limits = Limits(),
    ) -> None:
        self.node = node
        self.unix_path = unix_path
        self.tcp = tcp
        self.limits = limits
        self._authenticate = authenticate
        self._max_frame = max_frame
        self._max_bad_crc = max_bad_crc
        self.router = Router(
            node_name=node.name,
            retained=RetainedStore(
                max_count=limits.retained_count, max_bytes=limits.retained_bytes
            ),
        )
        self.peers: dict[int, _Peer] = {}
        self.addresses = Addresses(None, None)
        self._ids = itertools.count(1)
        self._request_routed = _Signal()
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._stopping = False
        self._no_peers = trio.Event()
        self.tcp_error: str | None = None

    @staticmethod
    def now_us() -> int:
        return int(trio.current_time() * 1_000_000)

    # --- lifecycle ---------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[Addresses] = trio.TASK_STATUS_IGNORED):
        """Listen, then serve connections until `stop()`; started() reports the addresses."""
        listeners: list[trio.SocketListener] = []
        try:
            if self.unix_path is not None:
                listeners.append(_unix_listener(self.unix_path))
            if self.tcp is not None:
                listeners.extend(await self._tcp_listeners(*self.tcp))
            self.addresses = _addresses(listeners, self.unix_path)
            async with trio.open_nursery() as nursery:
                accept = trio.CancelScope()
                nursery.start_soon(self._accept, listeners, nursery, accept)
                nursery.start_soon(self._expire_requests)
                task_status.started(self.addresses)
                await self._stop.wait()
                await self._shut_down(accept)
                nursery.cancel_scope.cancel()
        finally:
            for listener in listeners:
                with contextlib.suppress(OSError):
                    listener.socket.close()
            if self.unix_path is not None and listeners:
                with contextlib.suppress(FileNotFoundError):
                    self.unix_path.unlink()
            self._stopped.set()

    async def _tcp_listeners(self, host: str, port: int) -> list[trio.SocketListener]:
        """TCP is for other boxes and remote tools; local programs use the Unix socket.
        An address in use degrades the endpoint (logged, in health) instead of stopping
        the appliance, so a second appliance on one machine still serves its socket."""
        try:
            return await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            self.tcp_error = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            log.error("bus: %s; serving the Unix socket only", self.tcp_error)
            return []

    async def stop(self) -> None:
        """Close every connection with `going_away` and stop; returns when `serve` ended
        (at most `close_grace` and a little after; the caller may bound it further)."""
        self._stop.set()
        await self._stopped.wait()

    async def _shut_down(self, accept: trio.CancelScope) -> None:
        self._stopping = True
        accept.cancel()
        for peer in list(self.peers.values()):
            peer.request_close("going_away", "the appliance is stopping")
        if self.peers:
            self._no_peers = trio.Event()
            with trio.move_on_after(self.limits.close_grace):
                await self._no_peers.wait()
        log.info("bus stopped (%d connections cut at the deadline)", len(self.peers))

    async def _accept(
        self, listeners: list[trio.SocketListener], nursery: trio.Nursery, scope: trio.CancelScope
    ) -> None:
        with scope:
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    def health(self) -> tuple[str, str]:
        where = ", ".join(a for a in (self.addresses.unix, self.addresses.tcp) if a)
        detail = f"{where}; {len(self.peers)} connections"
        if self.tcp_error is not None:
            return "degraded", f"{self.tcp_error}; {detail}"
        return "ok", detail

    # --- one connection ----------------------------------------------------------------------

    async def _connection(self, stream: trio.abc.Stream) -> None:
        conn = Connection(
            "server",
            authenticate=self._authenticate,
            clock=self.now_us,
            connection_id=next(self._ids),
            node=self.node,
            max_frame=self._max_frame,
            max_bad_crc=self._max_bad_crc,
        )
        peer = _Peer(conn, stream, self.limits)
        if self._stopping:
            peer.request_close("going_away", "the appliance is stopping")
        self.peers[peer.id] = peer
        try:
            with peer.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, peer)
                    nursery.start_soon(self._write, peer, nursery.cancel_scope)
                    nursery.start_soon(self._watch, peer)
        finally:
            self._forget(peer)

    def _forget(self, peer: _Peer) -> None:
        """The connection is over: detach it, answer its callers, publish its will."""
        del self.peers[peer.id]
        if not self.peers:
            self._no_peers.set()
        peer.room.set()  # publishers waiting for it give up
        if not peer.established:
            return
        for send in self.router.detach(peer.id):
            self._send(send)
        closed = peer.closed
        will_due = peer.cut is not None or closed is None or closed.will_due
        if peer.will is not None and will_due and not self._stopping:
            publish = m.Publish(
                topic=peer.will.topic,
                data=peer.will.data,
                retain=peer.will.retain,
                headers=peer.will.headers,
            )
            node = peer.conn.peer_node
            head = m.Head(source=node.name if node else None)
            for delivery in self.router.publish(peer.id, publish, head).deliveries:
                if self._offer(delivery) is not None:  # cleaning up: no waiting
                    log.warning(
                        "bus: the will of connection %d was not queued for connection %d "
                        "(its block subscription %d is full)",
                        peer.id,
                        delivery.connection,
                        delivery.sid,
                    )

    async def _read(self, peer: _Peer) -> None:
        while peer.closed is None:
            try:
                data = await peer.stream.receive_some(self.limits.receive_chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            for event in peer.conn.receive_data(data):
                await self._on_event(peer, event)
            peer.wake.set()

    async def _write(self, peer: _Peer, tree: trio.CancelScope) -> None:
        while True:
            out = self._take_output(peer)
            if out:
                with trio.move_on_after(self.limits.stuck_timeout) as timer:
                    try:
                        await peer.stream.send_all(out)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        tree.cancel()  # it hung up; the reader may not have noticed yet
                        return
                if timer.cancelled_caught:
                    peer.cut_off("slow_consumer", f"a write took over {timer.deadline} s")
                    return
                peer.room.set()
                continue
            if peer.conn.state is State.CLOSED:
                tree.cancel()  # the close frame (if any) is out: hang up
                return
            await peer.wake.wait()

    def _take_output(self, peer: _Peer) -> bytes:
        """Every byte due on the connection now, in order: the protocol's own replies,
        requests and replies for it, then a batch of deliveries."""
        conn = peer.conn
        chunks = [conn.data_to_send()]
        if peer.close_request is not None and conn.state in (State.HELLO, State.ESTABLISHED):
            chunks.append(conn.close(*peer.close_request))
            peer.closing_since = trio.current_time()
        if conn.state is not State.ESTABLISHED:
            peer.control.clear()
            return b"".join(chunks)
        while peer.control:
            chunks.append(self._send_one(conn, peer.control.popleft()))
        budget = self.limits.write_batch
        for queue in list(peer.queues.values()):
            while budget and (entry := queue.take()) is not None:
                deliver = entry.value.body
                assert isinstance(deliver, m.Deliver)
                gap = entry.gap + entry.superseded
                body = replace(deliver, gap=gap) if gap else deliver
                chunks.append(self._send_one(conn, m.Message(body, entry.value.head)))
                budget -= 1
        if not budget:
            peer.wake.set()  # more deliveries wait: come back after this write
        return b"".join(chunks)

    @staticmethod
    def _send_one(conn: Connection, message: m.Message) -> bytes:
        try:
            return conn.send(message)
        except LocalProtocolError as exc:  # e.g. too many requests pending on it
            log.warning("bus connection %d: not sent: %s", conn.connection_id, exc)
            return b""

    async def _watch(self, peer: _Peer) -> None:
        """The connection's deadlines: the hello, the closing handshake, its requests."""
        limits = self.limits
        opened = trio.current_time()
        while True:
            now = trio.current_time()
            conn = peer.conn
            if conn.state is State.HELLO and now - opened >= limits.hello_timeout:
                peer.request_close("hello_timeout", f"no hello within {limits.hello_timeout} s")
            if peer.closing_since is not None and now - peer.closing_since >= limits.close_grace:
                peer.scope.cancel()  # the peer did not answer our close: hang up
                return
            conn.tick(self.now_us())  # forget requests to it whose caller gave up
            wake = []
            if conn.state is State.HELLO and peer.close_request is None:
                wake.append(opened + limits.hello_timeout)
            if peer.closing_since is not None:
                wake.append(peer.closing_since + limits.close_grace)
            if conn.next_deadline is not None:
                wake.append(conn.next_deadline / 1_000_000)
            # The close request is seen by the writer, which sets closing_since; re-check
            # at least every close_grace so that a new closing deadline is noticed.
            with trio.move_on_at(min(wake, default=now + limits.close_grace)):
                await trio.sleep_forever()

    # --- acting on what a connection reported -----------------------------------------------

    async def _on_event(self, peer: _Peer, event: ev.Event) -> None:
        match event:
            case ev.Established(node=node, will=will):
                try:
                    self.router.attach(peer.id, node=node)
                except RouteError as exc:
                    peer.request_close(exc.code, str(exc))
                    return
                peer.established, peer.will = True, will
            case ev.Published(head=head, publish=publish):
                for delivery in self.router.publish(peer.id, publish, head).deliveries:
                    await self._deliver(delivery)
            case ev.Subscribed(sid=sid, pattern=pattern, group=group, policy=policy):
                await self._subscribe(peer, sid, pattern, group, policy)
            case ev.Unsubscribed(sid=sid):
                self.router.unsubscribe(peer.id, sid)
                peer.queues.pop(sid, None)
            case ev.RequestReceived(head=head, request=request):
                route = self.router.request(peer.id, request, head, now_us=self.now_us())
                if route.message.kind == "request":  # to a responder: the router waits
                    self._request_routed.set()
                self._send(route)
            case ev.ReplyReceived(reply=reply):
                route = self.router.reply(peer.id, reply)
                if route is not None:
                    self._send(route)
            case ev.QueryReceived(query=query):
                try:
                    found = self.router.query(query.selector)
                except SelectorError as exc:
                    peer.request_close("bad_message", f"query.selector: {exc}")
                    return
                holders = (self.peers.get(node.record) for node in found)
                nodes = tuple(p.conn.peer_node for p in holders if p and p.conn.peer_node)
                peer.queue_control(m.Message(m.QueryResult(id=query.id, nodes=nodes)))
            case ev.Closed():
                peer.closed = event
                if event.reason not in ("normal", "going_away"):  # the ordinary ends
                    log.info(
                        "bus connection %d closed (%s by %s): %s",
                        peer.id,
                        event.reason,
                        "peer" if event.by_peer else "endpoint",
                        event.text,
                    )
            case ev.FrameDropped(reason=reason, text=text):
                log.debug("bus connection %d dropped a frame: %s: %s", peer.id, reason, text)
            case _:
                pass  # pongs, streams and discovery registration: not routed yet

    async def _subscribe(
        self, peer: _Peer, sid: int, pattern, group: str | None, policy: SlowConsumer
    ) -> None:
        peer.queues[sid] = SubscriberQueue(
            policy, max_messages=self.limits.queue_messages, max_bytes=self.limits.queue_bytes
        )
        try:
            retained = self.router.subscribe(peer.id, sid, pattern, group, policy)
        except TopicError as exc:
            peer.queues.pop(sid, None)
            peer.request_close(
                "limit_exceeded" if exc.code.startswith("too_many") else "bad_message", str(exc)
            )
            return
        for delivery in retained:
            await self._deliver(delivery)

    def _send(self, send: Send) -> None:
        target = self.peers.get(send.connection)
        if target is not None:
            target.queue_control(send.message)

    def _offer(self, delivery: Delivery) -> tuple[_Peer, SubscriberQueue[m.Message]] | None:
        """Queue a delivery if its subscriber is there; returns it when the queue is full
        and the policy is `block` (the caller waits or gives up)."""
        peer = self.peers.get(delivery.connection)
        queue = peer.queues.get(delivery.sid) if peer is not None else None
        if peer is None or queue is None or not peer.alive:
            return None
        body = delivery.message.body
        assert isinstance(body, m.Deliver)
        outcome = queue.offer(body.topic, delivery.message, len(body.data))
        peer.wake.set()
        return (peer, queue) if outcome is Offer.FULL else None

    async def _deliver(self, delivery: Delivery) -> None:
        """Queue a delivery; for a `block` subscription wait for room, at most
        `stuck_timeout`, then cut the subscriber off as a slow consumer."""
        full = self._offer(delivery)
        if full is None:
            return
        peer, queue = full
        body = delivery.message.body
        assert isinstance(body, m.Deliver)
        with trio.move_on_after(self.limits.stuck_timeout):
            while peer.alive and delivery.sid in peer.queues:
                await peer.room.wait()
                if queue.offer(body.topic, delivery.message, len(body.data)) is not Offer.FULL:
                    peer.wake.set()
                    return
            return
        peer.cut_off(
            "slow_consumer", f"a block subscription stayed full {self.limits.stuck_timeout} s"
        )

    # --- request deadlines -------------------------------------------------------------------

    async def _expire_requests(self) -> None:
        """Answer `timeout` to callers whose responder is late (Router.expire), checking
        every `expire_interval` while requests are in flight (that is the accuracy of a
        `timeout` reply), idle otherwise."""
        while True:
            if self.router.in_flight:
                await trio.sleep(self.limits.expire_interval)
            else:
                await self._request_routed.wait()
            for send in self.router.expire(self.now_us()):
                self._send(send)


# --- listening -------------------------------------------------------------------------------


def _unix_listener(path: Path) -> trio.SocketListener:
    """A listening Unix socket at `path`, mode 0660; a stale socket file is replaced (the
    instance lock says no other appliance uses this data dir)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        os.chmod(path, 0o660)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def _addresses(listeners: list[trio.SocketListener], unix_path: Path | None) -> Addresses:
    tcp = None
    for listener in listeners:
        if listener.socket.family in (socket.AF_INET, socket.AF_INET6):
            host, port = listener.socket.getsockname()[:2]
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            tcp = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
            break
    return Addresses(os.fspath(unix_path) if unix_path is not None else None, tcp)
