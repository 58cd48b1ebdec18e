"""Routing decisions, alone and driven by real `Connection` pairs: a tiny in-memory hub
does what the trio endpoint will (feed bytes, act on events through the router, write
bytes), so publish/subscribe, queue groups, request/reply, no responders and timeouts are
tested end to end without sockets."""

from __future__ import annotations

import pytest

from appliance.bus import messages as m
from appliance.bus.connection import Connection, State
from appliance.bus.events import (
    Closed,
    Delivered,
    Established,
    Event,
    Published,
    ReplyReceived,
    RequestReceived,
    RequestTimedOut,
    Subscribed,
    Unsubscribed,
)
from appliance.bus.flow import SlowConsumer
from appliance.bus.retained import RetainedStore
from appliance.bus.router import RouteError, Router
from appliance.bus.selectors import SelectorError
from tests.bus.test_connection import TOKENS, Clock


class Hub:
    """Client connections joined to server connections through one router."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.router = Router(
            node_name="edge-01", retained=RetainedStore(max_count=100, max_bytes=10_000)
        )
        self.servers: dict[int, Connection] = {}
        self.clients: dict[int, Connection] = {}
        self.events: dict[int, list[Event]] = {}
        self.refused: list[Closed] = []
        self.written: dict[int, bytes] = {}  # what `send` returned, to write to the client

    def write(self, cid: int, data: bytes) -> None:
        self.written[cid] = self.written.get(cid, b"") + data

    def connect(self, name: str, token: str = "apl_op_secret") -> int:
        cid = len(self.servers) + 1
        self.servers[cid] = Connection(
            "server", authenticate=TOKENS.get, clock=self.clock, connection_id=cid
        )
        self.clients[cid] = Connection("client", clock=self.clock)
        self.events[cid] = []
        self.send(cid, self.clients[cid].hello(token, node=m.NodeRecord(name=name)))
        assert self.clients[cid].state is State.ESTABLISHED
        self.events[cid].clear()
        return cid

    def send(self, cid: int, data: bytes) -> None:
        """Bytes from client `cid`; run until every connection is quiet."""
        pending = {cid: data}
        while pending:
            cid, data = pending.popitem()
            for event in self.servers[cid].receive_data(data):
                self.act(cid, event)
            for other, srv in self.servers.items():
                out = self.written.pop(other, b"") + srv.data_to_send()
                if out:
                    self.events[other] += self.clients[other].receive_data(out)
                    back = self.clients[other].data_to_send()
                    if back:
                        pending[other] = pending.get(other, b"") + back

    def act(self, cid: int, event: Event) -> None:
        router, srv = self.router, self.servers[cid]
        if isinstance(event, Established):
            router.attach(cid, node=event.node)
        elif isinstance(event, Subscribed):
            for d in router.subscribe(cid, event.sid, event.pattern, event.group, event.policy):
                self.write(d.connection, self.servers[d.connection].send(d.message))
        elif isinstance(event, Unsubscribed):
            router.unsubscribe(cid, event.sid)
        elif isinstance(event, Published):
            for d in router.publish(cid, event.publish, event.head).deliveries:
                self.write(d.connection, self.servers[d.connection].send(d.message))
        elif isinstance(event, RequestReceived):
            out = router.request(cid, event.request, event.head, now_us=self.clock.now)
            self.write(out.connection, self.servers[out.connection].send(out.message))
        elif isinstance(event, ReplyReceived):
            out = router.reply(cid, event.reply)
            if out is not None:
                self.write(out.connection, self.servers[out.connection].send(out.message))
        elif isinstance(event, Closed):
            self.refused.append(event)
            for out in router.detach(cid):
                self.write(out.connection, self.servers[out.connection].send(out.message))
        else:  # pragma: no cover - nothing else is expected here
            raise AssertionError(event)
        assert srv is self.servers[cid]

    def tick(self) -> None:
        for out in self.router.expire(self.clock.now):
            self.write(out.connection, self.servers[out.connection].send(out.message))
        for cid, srv in self.servers.items():
            for event in srv.tick():
                assert isinstance(event, RequestTimedOut)
            if out := self.written.pop(cid, b"") + srv.data_to_send():
                self.events[cid] += self.clients[cid].receive_data(out)

    def take(self, cid: int) -> list[Event]:
        out, self.events[cid] = self.events[cid], []
        return out


def delivered(events: list[Event]) -> list[tuple[int, str, bytes]]:
    return [
        (e.deliver.sid, e.deliver.topic, e.deliver.data) for e in events if isinstance(e, Delivered)
    ]


# --- publish / subscribe ---------------------------------------------------------------------


def test_publish_reaches_matching_subscribers() -> None:
    hub = Hub()
    a, b, pub = hub.connect("a"), hub.connect("b"), hub.connect("pub")
    hub.send(a, hub.clients[a].send(m.Subscribe(sid=1, pattern="plant.*.temp")))
    hub.send(b, hub.clients[b].send(m.Subscribe(sid=9, pattern="plant.>")))
    hub.send(pub, hub.clients[pub].send(m.Publish(topic="plant.l3.temp", data=b"21")))
    hub.send(pub, hub.clients[pub].send(m.Publish(topic="plant.l3.hum", data=b"40")))
    assert delivered(hub.take(a)) == [(1, "plant.l3.temp", b"21")]
    assert delivered(hub.take(b)) == [(9, "plant.l3.temp", b"21"), (9, "plant.l3.hum", b"40")]
    assert hub.take(pub) == []


def test_deliver_carries_the_publishers_node_name() -> None:
    hub = Hub()
    a, pub = hub.connect("a"), hub.connect("sensor-7")
    hub.send(a, hub.clients[a].send(m.Subscribe(sid=1, pattern="x")))
    # A client cannot claim another node's name in the head.
    hub.send(pub, hub.clients[pub].send(m.Message(m.Publish(topic="x"), m.Head(source="mallory"))))
    [event] = hub.take(a)
    assert isinstance(event, Delivered) and event.head.source == "sensor-7"


def test_queue_group_shares_messages_round_robin() -> None:
    hub = Hub()
    w1, w2, plain, pub = (hub.connect(n) for n in ("w1", "w2", "plain", "pub"))
    for cid in (w1, w2):
        hub.send(cid, hub.clients[cid].send(m.Subscribe(sid=1, pattern="jobs.>", group="workers")))
    hub.send(plain, hub.clients[plain].send(m.Subscribe(sid=1, pattern="jobs.>")))
    for i in range(6):
        hub.send(pub, hub.clients[pub].send(m.Publish(topic="jobs.a", data=bytes([i]))))
    got1, got2 = delivered(hub.take(w1)), delivered(hub.take(w2))
    assert len(got1) == len(got2) == 3
    assert sorted(d for _, _, d in got1 + got2) == [bytes([i]) for i in range(6)]
    assert len(delivered(hub.take(plain))) == 6


def test_retained_value_is_sent_on_subscribe() -> None:
    hub = Hub()
    pub, late = hub.connect("pub"), hub.connect("late")
    hub.send(pub, hub.clients[pub].send(m.Publish(topic="cfg.mode", data=b"auto", retain=True)))
    hub.send(late, hub.clients[late].send(m.Subscribe(sid=2, pattern="cfg.*")))
    [event] = hub.take(late)
    assert isinstance(event, Delivered) and event.deliver.retained
    assert (event.deliver.topic, event.deliver.data) == ("cfg.mode", b"auto")


def test_permission_refusal_closes_only_the_offender() -> None:
    hub = Hub()
    viewer, other = hub.connect("viewer", "apl_view_secret"), hub.connect("other")
    hub.send(other, hub.clients[other].send(m.Subscribe(sid=1, pattern=">")))
    hub.send(viewer, hub.clients[viewer].send(m.Publish(topic="plant.a", data=b"x")))
    [refused] = hub.refused
    assert refused.reason == "forbidden"
    assert hub.servers[viewer].state is State.CLOSED
    assert delivered(hub.take(other)) == []
    assert len(hub.router.index.of_connection(viewer)) == 0
    # Everyone else carries on.
    hub.send(other, hub.clients[other].send(m.Publish(topic="plant.a", data=b"y")))
    assert delivered(hub.take(other)) == [(1, "plant.a", b"y")]


# --- request / reply -------------------------------------------------------------------------


def test_request_reply_through_a_responder() -> None:
    hub = Hub()
    svc, caller = hub.connect("svc"), hub.connect("caller")
    hub.send(svc, hub.clients[svc].send(m.Subscribe(sid=4, pattern="svc.echo", group="echo")))
    hub.send(
        caller,
        hub.clients[caller].send(m.Request(id=42, topic="svc.echo", timeout_us=10**6, data=b"hi")),
    )
    [req] = hub.take(svc)
    assert isinstance(req, RequestReceived) and req.request.sid == 4 and req.request.data == b"hi"
    assert req.head.source == "caller"
    hub.send(svc, hub.clients[svc].send(m.Reply(id=req.request.id, data=b"hi back")))
    [rep] = hub.take(caller)
    assert isinstance(rep, ReplyReceived) and rep.reply.id == 42 and rep.reply.data == b"hi back"
    assert rep.pending is not None and hub.router.in_flight == 0


def test_request_without_responder_gets_no_responders_at_once() -> None:
    hub = Hub()
    caller = hub.connect("caller")
    hub.send(
        caller, hub.clients[caller].send(m.Request(id=1, topic="svc.nobody", timeout_us=10**6))
    )
    [rep] = hub.take(caller)
    assert isinstance(rep, ReplyReceived) and rep.reply.status == "no_responders"
    assert rep.pending is not None


def test_request_timeout_answers_the_caller() -> None:
    clock = Clock()
    hub = Hub(clock)
    svc, caller = hub.connect("svc"), hub.connect("caller")
    hub.send(svc, hub.clients[svc].send(m.Subscribe(sid=1, pattern="svc.slow")))
    hub.send(caller, hub.clients[caller].send(m.Request(id=5, topic="svc.slow", timeout_us=1000)))
    [req] = hub.take(svc)
    clock.now += 1000
    hub.tick()
    [rep] = hub.take(caller)
    assert isinstance(rep, ReplyReceived) and rep.reply.status == "timeout" and rep.reply.id == 5
    # The responder's late reply goes nowhere.
    assert isinstance(req, RequestReceived)
    hub.send(svc, hub.clients[svc].send(m.Reply(id=req.request.id)))
    assert hub.take(caller) == []


def test_responder_going_away_answers_no_responders() -> None:
    hub = Hub()
    svc, caller = hub.connect("svc"), hub.connect("caller")
    hub.send(svc, hub.clients[svc].send(m.Subscribe(sid=1, pattern="svc.x")))
    hub.send(caller, hub.clients[caller].send(m.Request(id=5, topic="svc.x", timeout_us=10**6)))
    hub.send(svc, b"")  # svc hung up
    [rep] = hub.take(caller)
    assert isinstance(rep, ReplyReceived) and rep.reply.status == "no_responders"


def test_request_by_destination() -> None:
    hub = Hub()
    target, caller = hub.connect("logger"), hub.connect("caller")
    request = m.Message(
        m.Request(id=3, topic="svc.log", timeout_us=10**6), m.Head(destination="logger")
    )
    hub.send(caller, hub.clients[caller].send(request))
    [req] = hub.take(target)
    assert isinstance(req, RequestReceived) and req.request.sid is None


# --- the router alone: names, links, hop limits ------------------------------------------------


def test_node_names_are_unique_and_queryable() -> None:
    router = Router(node_name="edge-01")
    router.attach(1, node=m.NodeRecord(name="s1", labels={"line": "3"}))
    router.attach(2, node=m.NodeRecord(name="s2", labels={"line": "4"}))
    try:
        router.attach(3, node=m.NodeRecord(name="s1"))
    except RouteError as exc:
        assert exc.code == "name_taken"
    else:  # pragma: no cover
        raise AssertionError("name_taken expected")
    assert [n.name for n in router.query("line in (3)")] == ["s1"]
    assert router.node_connection("s2") == 2
    router.detach(1)
    assert router.node_connection("s1") is None


def test_links_get_relayed_heads_and_no_echo() -> None:
    router = Router(node_name="edge-01", hop_limit=2)
    router.attach(1, node=m.NodeRecord(name="sensor-1"))
    router.attach(10, link=True)
    router.attach(11, link=True)
    for link in (10, 11):
        router.subscribe(link, 1, ">", policy=SlowConsumer.BLOCK)
    result = router.publish(1, m.Publish(topic="a.b", data=b"x"))
    heads = {d.connection: d.message.head for d in result.deliveries}
    assert set(heads) == {10, 11}
    assert heads[10] == m.Head(
        source="sensor-1", forward_for_source="edge-01", forward_for_connection=1, hops=1
    )
    assert {d.policy for d in result.deliveries} == {SlowConsumer.BLOCK}
    # From link 10: to local clients only (one hop), never back, never on to link 11.
    router.attach(2, node=m.NodeRecord(name="display"))
    router.subscribe(2, 7, "a.>")
    relayed = heads[10]
    result = router.publish(10, m.Publish(topic="a.b"), relayed)
    [d] = result.deliveries
    assert d.connection == 2 and d.message.head == relayed  # who sent it, from where
    # A request for a node that is not here goes on over another link, one more hop,
    # and is refused past the hop limit.
    ask = m.Request(id=4, topic="svc.x", timeout_us=1000)
    onward = router.request(10, ask, m.Head(destination="far", hops=1), now_us=0)
    assert onward.connection == 11 and onward.message.head.hops == 2
    refused = router.request(10, ask, m.Head(destination="far", hops=2), now_us=0)
    assert refused.connection == 10 and refused.message.body.status == "no_responders"
    assert "hop limit" in refused.message.body.error


def test_link_interest_is_local_subscriptions_only() -> None:
    router = Router(node_name="edge-01")
    router.attach(1, node=m.NodeRecord(name="sensor-1"))
    router.attach(10, link=True)
    router.subscribe(1, 1, "plant.>")
    router.subscribe(1, 2, "svc.echo", group="echo")
    router.subscribe(10, 1, "far.>")  # what the linked box wants: not passed on
    assert router.interest() == {("plant.>", None), ("svc.echo", "echo")}


def test_a_group_message_from_a_link_goes_to_a_local_member() -> None:
    router = Router(node_name="edge-01", chooser=lambda n: 0)
    router.attach(1, node=m.NodeRecord(name="worker-1"))
    router.attach(10, link=True)
    router.subscribe(10, 3, "jobs", group="w")  # the far box's members, joined first
    router.subscribe(1, 4, "jobs", group="w")
    result = router.publish(10, m.Publish(topic="jobs"), m.Head(hops=1), only=("jobs", "w"))
    assert [(d.connection, d.sid) for d in result.deliveries] == [(1, 4)]


def test_request_goes_over_a_link_when_no_local_responder() -> None:
    router = Router(node_name="edge-01")
    router.attach(1, node=m.NodeRecord(name="caller"))
    router.attach(10, link=True)
    router.subscribe(10, 5, "svc.>")
    out = router.request(1, m.Request(id=8, topic="svc.remote", timeout_us=100), now_us=0)
    assert out.connection == 10 and out.message.head.hops == 1
    assert out.message.head.forward_for_source == "edge-01"
    # A local responder is preferred to the link.
    router.subscribe(1, 6, "svc.remote")
    local = router.request(1, m.Request(id=9, topic="svc.remote", timeout_us=100), now_us=0)
    assert local.connection == 1
    # Unknown destination and no link: no responders.
    alone = Router(node_name="edge-02")
    alone.attach(1)
    msg = alone.request(
        1, m.Request(id=1, topic="svc.a", timeout_us=1), m.Head(destination="x"), now_us=0
    )
    assert isinstance(msg.message.body, m.Reply) and msg.message.body.status == "no_responders"


def test_forwarded_request_ids_do_not_collide() -> None:
    router = Router(node_name="edge-01")
    for cid in (1, 2, 3):
        router.attach(cid)
    router.subscribe(3, 1, "svc.a")
    first = router.request(1, m.Request(id=7, topic="svc.a", timeout_us=100), now_us=0)
    second = router.request(2, m.Request(id=7, topic="svc.a", timeout_us=100), now_us=0)
    assert isinstance(first.message.body, m.Request) and isinstance(second.message.body, m.Request)
    assert first.message.body.id != second.message.body.id
    back = router.reply(3, m.Reply(id=second.message.body.id, data=b"2"))
    assert (
        back is not None and back.connection == 2 and back.message.body == m.Reply(id=7, data=b"2")
    )


# --- register / deregister: names after the hello ---------------------------------------------


def _names(router: Router, selector: str = "") -> dict[str, int]:
    return {node.name: node.record for node in router.query(selector)}


def _source(router: Router, connection: int) -> str | None:
    router.subscribe(99, 1, "probe.>")
    [delivery] = router.publish(connection, m.Publish(topic="probe.x")).deliveries
    router.unsubscribe(99, 1)
    return delivery.message.head.source


def test_register_names_a_connection_that_said_hello_without_a_name() -> None:
    router = Router(node_name="edge-01")
    router.attach(1)
    router.attach(99)
    assert _source(router, 1) is None
    assert router.register(1, m.NodeRecord(name="late", labels={"line": "3"})) is None
    assert _names(router, "line=3") == {"late": 1}
    assert router.node_connection("late") == 1
    assert _source(router, 1) == "late"  # its messages carry the name at once


def test_register_again_updates_labels_or_replaces_the_name() -> None:
    router = Router(node_name="edge-01")
    router.attach(1, node=m.NodeRecord(name="s1", labels={"line": "3"}))
    router.attach(99)
    assert router.register(1, m.NodeRecord(name="s1", labels={"line": "4"})) is None
    assert _names(router, "line=3") == {} and _names(router, "line=4") == {"s1": 1}
    assert router.register(1, m.NodeRecord(name="s2")) == "s1"  # one name per connection
    assert _names(router) == {"s2": 1}
    assert _source(router, 1) == "s2"
    router.attach(2, node=m.NodeRecord(name="s1"))  # the released name is free again
    assert router.node_connection("s1") == 2


def test_register_of_a_name_another_connection_holds_changes_nothing() -> None:
    router = Router(node_name="edge-01")
    router.attach(1, node=m.NodeRecord(name="s1", labels={"a": "1"}))
    router.attach(2, node=m.NodeRecord(name="s2"))
    with pytest.raises(RouteError) as refused:
        router.register(2, m.NodeRecord(name="s1", labels={"a": "2"}))
    assert refused.value.code == "name_taken"
    assert _names(router) == {"s1": 1, "s2": 2}
    assert _names(router, "a=1") == {"s1": 1}


def test_register_with_a_bad_label_changes_nothing() -> None:
    router = Router(node_name="edge-01")
    router.attach(1, node=m.NodeRecord(name="s1"))
    bad = m.NodeRecord.trusted(name="s2", labels={"-bad-": "x"})  # as if unchecked
    with pytest.raises(SelectorError) as refused:
        router.register(1, bad)
    assert refused.value.code == "invalid_label"
    assert _names(router) == {"s1": 1}


def test_links_and_unknown_connections_do_not_register() -> None:
    router = Router(node_name="edge-01")
    router.attach(10, node=m.NodeRecord(name="edge-02"), link=True)
    for connection in (10, 11):  # a link; a connection never attached
        with pytest.raises(RouteError) as refused:
            router.register(connection, m.NodeRecord(name="x"))
        assert refused.value.code == "unexpected_message"
    assert _names(router) == {"edge-02": 10}


def test_deregister_releases_only_the_connections_own_name() -> None:
    router = Router(node_name="edge-01")
    router.attach(1, node=m.NodeRecord(name="s1"))
    router.attach(2, node=m.NodeRecord(name="s2"))
    router.attach(99)
    assert router.deregister(1, "s2") is False  # another's name: ignored
    assert router.deregister(1, "nobody") is False
    assert _names(router) == {"s1": 1, "s2": 2}
    assert router.deregister(1, "s1") is True
    assert _names(router) == {"s2": 2}
    assert _source(router, 1) is None
    assert router.deregister(1, "s1") is False  # already gone
    router.detach(1)  # and its detach has no name to remove
    assert _names(router) == {"s2": 2}
