"""The bus endpoint: trio servers on a Unix socket and TCP that drive the sans-IO parts.

    endpoint = BusEndpoint(authenticate=token_authenticator(tokens), node=..., unix_path=...)
    addresses = await nursery.start(endpoint.serve)   # listening on both
    ...
    await endpoint.stop()                             # close every connection: going_away

This module only moves bytes and waits: `Connection` decides what the bytes mean, `Router`
who gets what, `SubscriberQueue` what a slow consumer loses. Each connection is a `Peer`
(`appliance/bus/peer.py`): one task tree inside the endpoint's nursery with a reader, a
single writer and a timer; the endpoint acts on what its reader reports (`_on_event`).

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
`deregister` (node names come from the hello), links to other endpoints.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import trio

from appliance.bus import events as ev
from appliance.bus import messages as m
from appliance.bus.codec import DEFAULT_MAX_BAD_CRC, DEFAULT_MAX_FRAME
from appliance.bus.connection import Connection
from appliance.bus.flow import Offer, SlowConsumer, SubscriberQueue
from appliance.bus.peer import Limits, Peer, Signal, now_us
from appliance.bus.principal import Authenticate
from appliance.bus.retained import RetainedStore
from appliance.bus.router import Delivery, RouteError, Router, Send
from appliance.bus.selectors import SelectorError
from appliance.bus.topics import TopicError

log = logging.getLogger("appliance.bus")


@dataclass(frozen=True)
class Addresses:
    """Where the endpoint listens: `unix` a path, `tcp` a `tcp://host:port` URL."""

    unix: str | None
    tcp: str | None


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
        limits: Limits | None = None,
    ) -> None:
        self.node = node
        self.unix_path = unix_path
        self.tcp = tcp
        self.limits = limits = limits or Limits()
        self._authenticate = authenticate
        self._max_frame = max_frame
        self._max_bad_crc = max_bad_crc
        self.router = Router(
            node_name=node.name,
            retained=RetainedStore(
                max_count=limits.retained_count, max_bytes=limits.retained_bytes
            ),
        )
        self.peers: dict[int, Peer] = {}
        self.addresses = Addresses(None, None)
        self._ids = itertools.count(1)
        self._request_routed = Signal()
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._stopping = False
        self._no_peers = trio.Event()
        self.tcp_error: str | None = None

    now_us = staticmethod(now_us)

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
        peer = Peer(conn, stream, self.limits)
        if self._stopping:
            peer.request_close("going_away", "the appliance is stopping")
        self.peers[peer.id] = peer
        try:
            await peer.run(self._on_event)
        finally:
            self._forget(peer)

    def _forget(self, peer: Peer) -> None:
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

    # --- acting on what a connection reported -----------------------------------------------

    async def _on_event(self, peer: Peer, event: ev.Event) -> None:
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
        self, peer: Peer, sid: int, pattern, group: str | None, policy: SlowConsumer
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

    def _offer(self, delivery: Delivery) -> tuple[Peer, SubscriberQueue[m.Message]] | None:
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
