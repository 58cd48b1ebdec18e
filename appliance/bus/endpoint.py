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

**Names.** A connection holds at most one node name: from its hello, or a later `register`
(which may also update its labels, or replace its name); `deregister` gives it up.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import random
import secrets
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cbor2
import trio

from appliance.bus import events as ev
from appliance.bus import messages as m
from appliance.bus.batch import WriteBatch
from appliance.bus.client import open_transport
from appliance.bus.codec import DEFAULT_MAX_BAD_CRC, DEFAULT_MAX_FRAME
from appliance.bus.connection import Connection
from appliance.bus.flow import Offer, SlowConsumer, SubscriberQueue
from appliance.bus.links import LinkInterest
from appliance.bus.peer import Limits, Peer, Signal, now_us
from appliance.bus.principal import Authenticate, BusPrincipal
from appliance.bus.relay import StreamRelays
from appliance.bus.retained import RetainedStore
from appliance.bus.router import Delivery, RouteError, Router, Send
from appliance.bus.selectors import SelectorError
from appliance.bus.stats import BusStats
from appliance.bus.topics import TopicError, split_topic

log = logging.getLogger("appliance.bus")

LINK_RETRY_FIRST = 0.5  # seconds before redialing a link, doubling up to LINK_RETRY_MAX
LINK_RETRY_MAX = 30.0
LINK_PING_INTERVAL = 15.0
ENDPOINT_CONNECTION = 0  # connection ids start at 1: 0 is the endpoint publishing itself


class MessageTooLarge(ValueError):
    """`BusEndpoint.publish`: the message would not fit in a frame to a subscriber."""

    code = "message_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the message needs a {size}-byte frame body; the bus takes {limit}")
        self.size, self.limit = size, limit


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
        links: Sequence[str] = (),
        link_token: str | None = None,
    ) -> None:
        self.node = node
        # A link URL may carry its own token (tcp://TOKEN@HOST:PORT); it is never shown.
        targets = [_link_target(url, link_token) for url in links]
        self.link_urls = tuple(url for url, _ in targets)
        self._link_tokens = dict(targets)
        self.link_status: dict[str, str] = {url: "connecting" for url in self.link_urls}
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
        self.batch = WriteBatch()  # a reader's chunk: written at its end (batch.py)
        self.interest = LinkInterest(self.router, self.peers)
        self.relays = StreamRelays(
            self.peers,
            self.router.node_connection,
            trio.current_time,
            buffer=limits.stream_buffer,
            keep=limits.stream_keep,
            max_relays=limits.max_relays,
        )
        self.stats = BusStats(clock=trio.current_time)
        self.addresses = Addresses(None, None)
        self._ids = itertools.count(1)
        self._request_routed = Signal()
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._stopping = False
        self._no_peers = trio.Event()
        self.tcp_error: str | None = None
        self._nursery: trio.Nursery | None = None  # the connections' (connect_internal)

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
                nursery.start_soon(self._expire_relays)
                for url in self.link_urls:
                    nursery.start_soon(self._dial, url)
                self._nursery = nursery
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
        # A link down is reported, not degraded: the box serves its own clients all the
        # same, and a degraded health would hold back an OTA commit for a far box's sake.
        links = [f"link {url}: {s}" for url, s in self.link_status.items()]
        if links:
            detail = f"{detail}; {'; '.join(links)}"
        if self.tcp_error is not None:
            return "degraded", f"{self.tcp_error}; {detail}"
        return "ok", detail

    # --- one connection ----------------------------------------------------------------------

    def connect_internal(self, principal: BusPrincipal) -> tuple[trio.SocketStream, str]:
        """A connection for a service in this process (appliance/bus/services.py): one end
        of a socket pair is served like any accepted connection, whose hello is accepted
        once, with the one-time secret returned beside the other end, as `principal`. No
        file, no port, no token on disk. RuntimeError unless the endpoint is serving."""
        if self._nursery is None or self._stopping:
            raise RuntimeError("the bus endpoint is not serving")
        ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        secret = secrets.token_urlsafe(32)
        unused = [secret.encode()]

        def authenticate(token: str | None) -> BusPrincipal | None:
            if unused and token is not None and secrets.compare_digest(token.encode(), unused[0]):
                unused.clear()
                return principal
            return None

        async def serve_then_hang_up(stream: trio.SocketStream) -> None:
            async with stream:  # as serve_listeners does for accepted connections
                await self._connection(stream, authenticate)

        self._nursery.start_soon(serve_then_hang_up, trio.SocketStream(ours))
        return trio.SocketStream(theirs), secret

    # --- links: dialing another endpoint ------------------------------------------------

    async def _dial(self, url: str) -> None:
        """Keep a link to the endpoint at `url` (tcp://HOST:PORT): connect, say hello as
        a link with `link_token`, serve it like any connection, and when it ends try
        again after a jittered backoff (0.5 s doubling to 30 s; reset once established)."""
        delay = LINK_RETRY_FIRST
        while not self._stopping:
            try:
                with trio.fail_after(self.limits.hello_timeout):
                    stream = await open_transport(url)
            except (OSError, trio.TooSlowError) as exc:
                self.link_status[url] = f"unreachable: {exc or type(exc).__name__}"
            else:
                conn = Connection(
                    "client",
                    clock=self.now_us,
                    connection_id=next(self._ids),
                    node=self.node,
                    max_frame=self._max_frame,
                    max_bad_crc=self._max_bad_crc,
                    manual_release=True,
                )
                peer = Peer(conn, stream, self.limits, self.batch)
                peer.link_url = url
                async with stream, trio.open_nursery() as nursery:
                    hello = conn.hello(self._link_tokens[url], node=self.node, link=True)
                    await stream.send_all(hello)
                    nursery.start_soon(self._ping, peer)
                    await self._run(peer)
                    nursery.cancel_scope.cancel()
                if peer.established:
                    delay = LINK_RETRY_FIRST
                closed = peer.closed
                why = f"{closed.reason}: {closed.text}" if closed else peer.cut or "hung up"
                self.link_status[url] = f"disconnected ({why})"
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, LINK_RETRY_MAX)

    async def _ping(self, peer: Peer) -> None:
        """Liveness on a dialed link: the far side closes one silent for `ping_timeout`."""
        for seq in itertools.count():
            await trio.sleep(min(LINK_PING_INTERVAL, self.limits.ping_timeout / 3))
            if peer.established:
                peer.queue_control(m.Message(m.Ping(seq=seq, time_us=self.now_us())))

    async def _connection(
        self, stream: trio.abc.Stream, authenticate: Authenticate | None = None
    ) -> None:
        conn = Connection(
            "server",
            authenticate=authenticate or self._authenticate,
            clock=self.now_us,
            connection_id=next(self._ids),
            node=self.node,
            max_frame=self._max_frame,
            max_bad_crc=self._max_bad_crc,
            manual_release=True,  # stream relays acknowledge what they took (relay.py)
        )
        await self._run(Peer(conn, stream, self.limits, self.batch))

    async def _run(self, peer: Peer) -> None:
        """Serve one connection (accepted, internal or a dialed link) until it ends."""
        self.stats.connected(peer.id, *_transport(peer.stream))
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
        self.stats.disconnected(peer.id)
        if not self.peers:
            self._no_peers.set()
        peer.room.set()  # publishers waiting for it give up
        if not peer.established:
            return
        was_link = self.router.is_link(peer.id)
        for send in self.router.detach(peer.id):
            self._send(send)
        self.relays.on_gone(peer)
        if was_link:
            self.interest.forget(peer.id)
            log.info("bus link %d to %s ended", peer.id, _node_name(peer))
        self.interest.sync()  # its subscriptions no longer count on the other links
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
            deliveries = self.router.publish(peer.id, publish, head).deliveries
            self.stats.published(None, publish.topic, len(publish.data), deliveries=len(deliveries))
            for delivery in deliveries:
                if self._offer(delivery) is Offer.FULL:  # cleaning up: no waiting
                    log.warning(
                        "bus: the will of connection %d was not queued for connection %d "
                        "(its block subscription %d is full)",
                        peer.id,
                        delivery.connection,
                        delivery.sid,
                    )

    # --- acting on what a connection reported -----------------------------------------------

    async def _on_event(self, peer: Peer, event: ev.Event) -> None:
        if not peer.established and not isinstance(event, _BEFORE_ATTACH):
            return  # its hello was refused (name_taken...): what came with it is dropped
        match event:
            case ev.Established(node=node, will=will, principal=principal, link=link):
                try:
                    self.router.attach(peer.id, node=node, link=link)
                except RouteError as exc:
                    if link:  # linked already (both ways, or twice): a loop
                        peer.request_close("link_refused", f"already linked: {exc}")
                    else:
                        peer.request_close(exc.code, str(exc))
                    return
                peer.established, peer.will = True, will
                self.relays.on_named(peer)
                if link:
                    log.info("bus link %d to %s established", peer.id, _node_name(peer))
                    if peer.link_url is not None:  # one we dialed
                        self.link_status[peer.link_url] = "connected"
                    self.interest.sync()
                self.stats.established(
                    peer.id,
                    node=node.name if node else None,
                    principal=principal.name if principal else None,
                    role=principal.role if principal else None,
                )
            case ev.Published(head=head, publish=publish):
                deliveries = self.router.publish(peer.id, publish, head).deliveries
                self.stats.published(
                    peer.id, publish.topic, len(publish.data), deliveries=len(deliveries)
                )
                for delivery in deliveries:
                    await self._deliver(delivery)
            case ev.Subscribed(sid=sid, pattern=pattern, group=group, policy=policy):
                await self._subscribe(peer, sid, pattern, group, policy)
            case ev.Unsubscribed(sid=sid):
                self.router.unsubscribe(peer.id, sid)
                peer.queues.pop(sid, None)
                self.interest.sync()
            case ev.Delivered(head=head, deliver=deliver):  # from a link: relay it here
                for delivery in self.interest.deliveries(peer, head, deliver):
                    await self._deliver(delivery)
            case ev.RequestReceived(head=head, request=request):
                route = self.router.request(peer.id, request, head, now_us=self.now_us())
                if route.message.kind == "request":  # to a responder: the router waits
                    self._request_routed.set()
                self._send(route)
            case ev.ReplyReceived(reply=reply):
                route = self.router.reply(peer.id, reply)
                if route is not None:
                    self._send(route)
            case ev.NodeRegistered(node=node):
                self._register(peer, node)
            case ev.NodeDeregistered(name=name):
                if peer.established and self.router.deregister(peer.id, name):
                    peer.conn.peer_node = None  # what discovery and the peers API show
                    self._renamed(peer)
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
            case ev.StreamData():
                self.relays.on_stream_data(peer, event)
            case ev.StreamAcked():
                self.relays.on_stream_acked(peer, event)
            case ev.StreamReset():
                self.relays.on_stream_reset(peer, event)
            case ev.StreamStopped():
                self.relays.on_stream_stopped(peer, event)
            case ev.FrameDropped(reason=reason, text=text):
                log.debug("bus connection %d dropped a frame: %s: %s", peer.id, reason, text)
            case _:
                pass  # pongs: nothing to route

    def _register(self, peer: Peer, node: m.NodeRecord) -> None:
        """`register`: name the connection, or update its record (`Router.register`). A
        name another connection holds closes it with `name_taken`, as its hello would
        have; relays waiting for the name resume on it."""
        if not peer.established:
            return  # refused at its hello: the close is on its way
        try:
            self.router.register(peer.id, node)
        except RouteError as exc:
            peer.request_close(exc.code, str(exc))
            return
        except SelectorError as exc:
            peer.request_close("bad_message", f"register.node: {exc}")
            return
        peer.conn.peer_node = node  # what discovery, wills and the peers API show
        self._renamed(peer)
        self.relays.on_named(peer)

    def _renamed(self, peer: Peer) -> None:
        node, principal = peer.conn.peer_node, peer.conn.principal
        self.stats.established(
            peer.id,
            node=node.name if node else None,
            principal=principal.name if principal else None,
            role=principal.role if principal else None,
        )

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
        self.interest.sync()
        for delivery in retained:
            await self._deliver(delivery)

    def _send(self, send: Send) -> None:
        target = self.peers.get(send.connection)
        if target is not None:
            target.queue_control(send.message)

    def _offer(self, delivery: Delivery) -> Offer | None:
        """Offer a delivery to its subscription's queue (counted in `stats`): what the
        queue did, FULL when the policy is `block` (the caller waits or gives up), None
        when the subscriber is gone."""
        peer = self.peers.get(delivery.connection)
        queue = peer.queues.get(delivery.sid) if peer is not None else None
        if peer is None or queue is None or not peer.alive:
            return None
        body = delivery.message.body
        assert isinstance(body, m.Deliver)
        outcome = queue.offer(body.topic, delivery.message, len(body.data))
        peer.poke()
        if outcome is not Offer.FULL:
            if outcome is not Offer.DROPPED:
                self.stats.delivered(delivery.connection, len(body.data))
            if outcome is not Offer.ACCEPTED:  # refused, or replaced a queued value
                self.stats.dropped(delivery.connection, body.topic)
        return outcome

    async def _deliver(self, delivery: Delivery) -> bool:
        """Queue a delivery (True: queued); for a `block` subscription wait for room, at
        most `stuck_timeout`, then cut the subscriber off as a slow consumer."""
        outcome = self._offer(delivery)
        if outcome is not Offer.FULL:
            return outcome is Offer.ACCEPTED or outcome is Offer.REPLACED
        peer = self.peers[delivery.connection]
        if self.batch.collecting():
            self.batch.end()  # about to wait: what the chunk made due goes out first
        with trio.move_on_after(self.limits.stuck_timeout):
            while peer.alive and delivery.sid in peer.queues:
                await peer.room.wait()
                outcome = self._offer(delivery)
                if outcome is not Offer.FULL:
                    return outcome is Offer.ACCEPTED
            return False
        peer.cut_off(
            "slow_consumer", f"a block subscription stayed full {self.limits.stuck_timeout} s"
        )
        return False

    # --- publishing as the endpoint (the HTTP API) -------------------------------------------

    async def publish(
        self,
        topic: str,
        data: bytes = b"",
        *,
        retain: bool = False,
        headers: dict[str, str] | None = None,
        source: str | None = None,
    ) -> int:
        """Publish as the endpoint itself: routed and queued like a connection's publish
        (a full `block` subscriber is waited for at most `stuck_timeout`, then cut off).
        Returns how many deliveries were queued. `source` (default: the endpoint's node
        name) is the delivered head's source. TopicError `invalid_topic`; InvalidMessage
        for bad headers or source; MessageTooLarge when a subscriber's frame would be
        over `max_frame`."""
        split_topic(topic)
        publish = m.Publish(topic=topic, data=data, retain=retain, headers=headers or {})
        head = m.Head(source=source or self.node.name)
        largest = m.Deliver(
            sid=m.U63, topic=topic, data=data, gap=m.U63, retained=True, headers=publish.headers
        )
        size = len(cbor2.dumps(m.Message(largest, head).to_wire()))
        if size > self._max_frame:
            raise MessageTooLarge(size, self._max_frame)
        deliveries = self.router.publish(ENDPOINT_CONNECTION, publish, head).deliveries
        self.stats.published(None, topic, len(data), deliveries=len(deliveries))
        queued = 0
        for delivery in deliveries:
            queued += await self._deliver(delivery)
        return queued

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

    async def _expire_relays(self) -> None:
        """Drop stream relays whose destination stayed away `stream_keep` seconds (checked
        at a tenth of it, at least every second; so at most that late)."""
        interval = min(1.0, self.limits.stream_keep / 10)
        while True:
            await trio.sleep(interval)
            if self.relays.waiting:
                self.relays.expire()


# What a connection may report before (or without) being attached to the router.
_BEFORE_ATTACH = (ev.Established, ev.Closed, ev.FrameDropped)


def _link_target(url: str, default_token: str | None) -> tuple[str, str | None]:
    """(the URL without its token, the token for it)."""
    token, at, place = url.removeprefix("tcp://").rpartition("@")
    return (f"tcp://{place}", token) if at else (url, default_token)


def _node_name(peer: Peer) -> str:
    node = peer.conn.peer_node
    return node.name if node else "an unnamed endpoint"


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


def _transport(stream: trio.abc.Stream) -> tuple[str, str]:
    """("unix" | "tcp", the peer's address) of an accepted connection."""
    sock = getattr(stream, "socket", None)
    if sock is None or sock.family == socket.AF_UNIX:
        return "unix", ""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:  # it hung up already
        return "tcp", ""
    return "tcp", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _addresses(listeners: list[trio.SocketListener], unix_path: Path | None) -> Addresses:
    tcp = None
    for listener in listeners:
        if listener.socket.family in (socket.AF_INET, socket.AF_INET6):
            host, port = listener.socket.getsockname()[:2]
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            tcp = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
            break
    return Addresses(os.fspath(unix_path) if unix_path is not None else None, tcp)
