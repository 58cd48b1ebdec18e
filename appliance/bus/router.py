"""Who gets what, sans-IO: the endpoint's routing decisions over its established connections.

The router holds the subscriptions (`SubscriptionIndex`, with queue groups), the node
names (`NodeRegistry`: name -> connection, queried by label selector; a connection holds
at most one, from its hello or a later `register`, until `deregister` or it goes), the
retained values (`RetainedStore`) and the requests in flight between connections. It
returns decisions — which connection gets which message — and the endpoint writes them; it
never blocks, and slow-consumer queues are the endpoint's.

**Publish.** Every plain subscription whose pattern matches gets a `deliver`, and one
member of each matching queue group. A publish from a link is not delivered back to that
link. A `retain` publish updates the retained store (empty data clears the topic).

**Request.** Requests go to topics, by convention `svc.<service>[.<method>]`; a service
serves by subscribing to its topic, usually in a queue group so that its instances share
the calls. Exactly one subscription gets each request: the first of the matches (a queue
group counts as its chosen member), preferring local connections to links, then the
lowest (connection, sid). It gets the request under a fresh id of that connection (ids
are per connection), with `sid` set; its reply is mapped back to the caller's id. No
match: an immediate `no_responders` reply. A request with a `destination` goes to that
node's connection (`sid` absent), or to a link if the node is not local.

**Links.** A link is a connection to another endpoint, attached with `link=True`; it
subscribes like a client (for what its side wants) and is delivered to like one. What
goes out on a link carries a relayed head: `forward_for_source` = this endpoint's node
name, `forward_for_connection` = the original sender's connection id here (unless the
message was already relayed), `hops` + 1. A message that would exceed `hop_limit` is not
sent (counted in `PublishResult.hop_limited`, or a request gets `no_responders`): two
endpoints linked both ways cannot bounce a message forever.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.bus import messages as m
from appliance.bus.flow import SlowConsumer
from appliance.bus.retained import PutResult, RetainedStore
from appliance.bus.selectors import Node, NodeRegistry
from appliance.bus.topics import Pattern, Subscription, SubscriptionIndex, TopicError

DEFAULT_HOP_LIMIT = 8
_NO_HEAD = m.Head()
ConnectionId = int


class RouteError(ValueError):
    """A routing refusal; `code` is a close reason (`name_taken`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Delivery:
    """Send `message` (a deliver) to `connection` for subscription `sid`."""

    connection: ConnectionId
    sid: int
    policy: SlowConsumer
    message: m.Message


@dataclass(frozen=True)
class Send:
    """Send `message` to `connection` (a request, a reply)."""

    connection: ConnectionId
    message: m.Message


@dataclass(frozen=True)
class PublishResult:
    deliveries: tuple[Delivery, ...]
    retained: PutResult | None = None
    hop_limited: int = 0


@dataclass(frozen=True)
class _InFlight:
    caller: ConnectionId
    caller_id: int
    responder: ConnectionId
    deadline_us: int


@dataclass
class _Conn:
    node: str | None
    link: bool
    next_request_id: int = 0
    head: m.Head = _NO_HEAD  # what its messages carry: source = its node name


class Router:
    def __init__(
        self,
        *,
        node_name: str,
        retained: RetainedStore | None = None,
        chooser: Callable[[int], int] | None = None,
        max_subscriptions_per_connection: int | None = None,
        hop_limit: int = DEFAULT_HOP_LIMIT,
    ) -> None:
        self.node_name = node_name
        self.retained = retained
        self.hop_limit = hop_limit
        self.index = SubscriptionIndex(
            chooser=chooser, max_per_connection=max_subscriptions_per_connection
        )
        self.nodes: NodeRegistry[ConnectionId] = NodeRegistry()
        self._links: set[ConnectionId] = set()  # the connections that are links
        self._conns: dict[ConnectionId, _Conn] = {}
        self._policies: dict[tuple[ConnectionId, int], SlowConsumer] = {}
        self._in_flight: dict[tuple[ConnectionId, int], _InFlight] = {}

    # --- connections -------------------------------------------------------------------------

    def attach(
        self,
        connection: ConnectionId,
        *,
        node: m.NodeRecord | None = None,
        link: bool = False,
    ) -> None:
        """An established connection; its node record (if any) makes its name routable.
        RouteError `name_taken` if another connection holds the name."""
        if node is not None:
            self._claim(connection, node)
        name = node.name if node else None
        self._conns[connection] = _Conn(name, link, head=m.Head.trusted(source=name))
        if link:
            self._links.add(connection)

    def register(self, connection: ConnectionId, node: m.NodeRecord) -> str | None:
        """The connection names itself after its hello, or updates its record. One name
        per connection: registering another name releases the one it held, which is
        returned (None when it held none, or re-registered the same name with new
        labels). RouteError `name_taken` if another connection holds the name,
        `unexpected_message` from a link or a connection not attached; SelectorError
        (`invalid_node_name`, `invalid_label`) for a bad record. A refusal changes nothing."""
        conn = self._conns.get(connection)
        if conn is None or conn.link:
            what = "a link" if conn is not None else "a connection not established"
            raise RouteError("unexpected_message", f"{what} does not register a node")
        self._claim(connection, node)
        released = conn.node if conn.node not in (None, node.name) else None
        if released is not None:
            self.nodes.remove(released)
        conn.node, conn.head = node.name, m.Head.trusted(source=node.name)
        return released

    def deregister(self, connection: ConnectionId, name: str) -> bool:
        """The connection gives up its node name; False (nothing changes) when it does
        not hold `name` (another connection's name, or none: already gone)."""
        conn = self._conns.get(connection)
        if conn is None or conn.link or conn.node != name:
            return False
        self.nodes.remove(name)
        conn.node, conn.head = None, m.Head.trusted(source=None)
        return True

    def _claim(self, connection: ConnectionId, node: m.NodeRecord) -> None:
        """Hold `node`'s name for `connection` (put first: a bad record changes nothing)."""
        holder = self.nodes.get(node.name)
        if holder is not None and holder.record != connection:
            raise RouteError("name_taken", f"node {node.name} is connected already")
        self.nodes.put(node.name, node.labels, connection)

    def detach(self, connection: ConnectionId) -> list[Send]:
        """The connection is gone: forget its subscriptions and name; callers waiting for
        it get a `no_responders` reply (returned)."""
        conn = self._conns.pop(connection, None)
        self._links.discard(connection)
        for sub in self.index.remove_connection(connection):
            self._policies.pop((connection, sub.sid), None)  # type: ignore[arg-type]
        if conn is not None and conn.node is not None:
            self.nodes.remove(conn.node)
        out = []
        for key, flight in list(self._in_flight.items()):
            if flight.caller == connection:
                del self._in_flight[key]
            elif flight.responder == connection:
                del self._in_flight[key]
                out.append(self._answer(flight, "no_responders", "the responder went away"))
        return out

    def is_link(self, connection: ConnectionId) -> bool:
        conn = self._conns.get(connection)
        return conn is not None and conn.link

    @property
    def links(self) -> list[ConnectionId]:
        return sorted(self._links)

    def interest(self) -> set[tuple[str, str | None]]:
        """What linked endpoints should send us: the (pattern, group) of every local
        client's subscription (one hop: what a link asked for is not passed on)."""
        return {
            (sub.pattern.text, sub.group)
            for sub in self.index.all()
            if (conn := self._conns.get(sub.connection)) is not None and not conn.link  # type: ignore[call-overload]
        }

    def node_connection(self, name: str) -> ConnectionId | None:
        node = self.nodes.get(name)
        return node.record if node else None

    def query(self, selector: str) -> list[Node[ConnectionId]]:
        """Nodes whose labels match (SelectorError for a bad selector)."""
        return self.nodes.select(selector)

    # --- subscriptions -----------------------------------------------------------------------

    def subscribe(
        self,
        connection: ConnectionId,
        sid: int,
        pattern: Pattern | str,
        group: str | None = None,
        policy: SlowConsumer = SlowConsumer.DROP,
    ) -> list[Delivery]:
        """Add a subscription (TopicError as `SubscriptionIndex.add`); returns the
        retained values it gets first."""
        sub = self.index.add(connection, sid, pattern, group)
        self._policies[(connection, sid)] = policy
        if self.retained is None:
            return []
        return [
            Delivery(
                connection,
                sid,
                policy,
                m.Message(
                    m.Deliver(
                        sid=sid,
                        topic=value.topic,
                        data=value.payload,
                        retained=True,
                        headers=dict(value.headers),
                    )
                ),
            )
            for value in self.retained.matching(sub.pattern)
        ]

    def unsubscribe(self, connection: ConnectionId, sid: int) -> bool:
        self._policies.pop((connection, sid), None)
        return self.index.remove(connection, sid) is not None

    # --- publish -----------------------------------------------------------------------------

    def publish(
        self,
        source: ConnectionId,
        publish: m.Publish,
        head: m.Head | None = None,
        *,
        only: tuple[str, str | None] | None = None,
    ) -> PublishResult:
        """Who gets a publish (the topic was validated by the connection). `only` =
        (pattern, group): just the subscriptions with that pattern and group (a message a
        link delivered for its subscription of that key; see `links`)."""
        head = self._source_head(source, head or _NO_HEAD)
        put = None
        if publish.retain and self.retained is not None:
            put = self.retained.put(publish.topic, publish.data, publish.headers)
        deliveries, limited = [], 0
        from_link = self.is_link(source)
        # From a link: to local clients only, and a group's member is chosen among them.
        for sub in self.index.match(publish.topic, exclude=self._links if from_link else ()):
            target = self._conns.get(sub.connection)  # type: ignore[call-overload]
            if target is None:
                continue
            if only is not None and (sub.pattern.text, sub.group) != only:
                continue
            out_head = head
            if target.link:
                relayed = self.relay_head(head, source)
                if relayed is None:
                    limited += 1
                    continue
                out_head = relayed
            deliver = m.Deliver.trusted(  # from a checked publish: nothing to check again
                sid=sub.sid, topic=publish.topic, data=publish.data, headers=publish.headers
            )
            deliveries.append(
                Delivery(
                    sub.connection,  # type: ignore[arg-type]
                    sub.sid,  # type: ignore[arg-type]
                    self._policies.get(sub.key, SlowConsumer.DROP),  # type: ignore[arg-type]
                    m.Message.trusted(deliver, out_head),
                )
            )
        return PublishResult(tuple(deliveries), put, limited)

    # --- requests ----------------------------------------------------------------------------

    def request(
        self,
        source: ConnectionId,
        request: m.Request,
        head: m.Head | None = None,
        *,
        now_us: int,
    ) -> Send:
        """Where a request goes: to one responder (under a fresh id), or straight back to
        the caller as a `no_responders` reply."""
        head = self._source_head(source, head or _NO_HEAD)
        target, sid = self._responder(source, request.topic, head.destination)
        if target is None:
            return self._no_responders(source, request.id, "nobody serves " + request.topic)
        out_head = m.Head.trusted(source=head.source, hops=head.hops)  # from a checked head
        if self._conns[target].link:
            relayed = self.relay_head(head, source)
            if relayed is None:
                return self._no_responders(source, request.id, "hop limit")
            out_head = relayed
        conn = self._conns[target]
        while (target, conn.next_request_id) in self._in_flight:
            conn.next_request_id = (conn.next_request_id + 1) % m.U63
        rid = conn.next_request_id
        conn.next_request_id = (rid + 1) % m.U63
        deadline = now_us + request.timeout_us
        self._in_flight[(target, rid)] = _InFlight(source, request.id, target, deadline)
        forwarded = request.trusted_replace(id=rid, sid=sid)  # ids the router chose
        return Send(target, m.Message.trusted(forwarded, out_head))

    def reply(self, responder: ConnectionId, reply: m.Reply) -> Send | None:
        """The caller's copy of a responder's reply, or None if nobody waits for it."""
        flight = self._in_flight.pop((responder, reply.id), None)
        if flight is None or flight.caller not in self._conns:
            return None
        return Send(flight.caller, m.Message.trusted(reply.trusted_replace(id=flight.caller_id)))

    def expire(self, now_us: int) -> list[Send]:
        """Requests whose deadline passed: the callers get a `timeout` reply."""
        out = []
        for key, flight in list(self._in_flight.items()):
            if flight.deadline_us <= now_us:
                del self._in_flight[key]
                if flight.caller in self._conns:
                    out.append(self._answer(flight, "timeout", "the responder did not answer"))
        return out

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _responder(
        self, source: ConnectionId, topic: str, destination: str | None
    ) -> tuple[ConnectionId | None, int | None]:
        if destination is not None:
            local = self.node_connection(destination)
            if local is not None:
                return local, None
            return self._link_except(source), None
        try:
            matches = self.index.match(topic, exclude=self._links if self.is_link(source) else ())
        except TopicError:
            return None, None
        # From a link, `match` left the links out (one hop); from a client, a link is a
        # responder like any other, after the local ones.
        candidates: list[Subscription] = [
            sub
            for sub in matches
            if sub.connection in self._conns  # type: ignore[operator]
        ]
        if not candidates:
            return None, None
        best = min(
            candidates,
            key=lambda s: (self._conns[s.connection].link, s.connection, s.sid),  # type: ignore[index]
        )
        return best.connection, best.sid  # type: ignore[return-value]

    def _link_except(self, source: ConnectionId) -> ConnectionId | None:
        links = sorted(c for c, conn in self._conns.items() if conn.link and c != source)
        return links[0] if links else None

    def _no_responders(self, caller: ConnectionId, caller_id: int, text: str) -> Send:
        return Send(caller, m.Message(m.Reply(id=caller_id, status="no_responders", error=text)))

    def _answer(self, flight: _InFlight, status: str, text: str) -> Send:
        reply = m.Reply(id=flight.caller_id, status=status, error=text)
        return Send(flight.caller, m.Message(reply))

    # --- relaying ----------------------------------------------------------------------------

    def _source_head(self, source: ConnectionId, head: m.Head) -> m.Head:
        """A sender's head as routed: `source` is the node name its connection holds
        (a client cannot speak for another node); a link's head is kept as relayed."""
        conn = self._conns.get(source)
        if conn is None or conn.link:
            return head
        if head.destination is None:
            return conn.head
        return m.Head.trusted(source=conn.node, destination=head.destination)

    def relay_head(self, head: m.Head, source: ConnectionId) -> m.Head | None:
        """The head of a message sent on a link, or None over the hop limit."""
        hops = head.hops + 1
        if hops > self.hop_limit:
            return None
        first = head.forward_for_connection is None
        return m.Head(
            source=head.source,
            destination=head.destination,
            forward_for_source=self.node_name,
            forward_for_connection=source if first else head.forward_for_connection,
            hops=hops,
        )
