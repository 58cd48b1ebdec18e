"""Links between endpoints: interest propagation and relaying, and the dialer.

A link is one connection between two endpoints (another box), dialed by the side whose
settings name the other (`bus.links`), with `hello.link` and an admin or operator token
of the far side. Once established both sides may send every kind but hello and welcome,
and each treats the other like a client that stands for everyone behind it:

**Interest, one hop.** Each endpoint subscribes on each link to the (pattern, group) of
every subscription of its own clients; `LinkInterest.sync` computes the difference and
queues `subscribe`/`unsubscribe` on the link after every change. What a link asked for
is not passed on to other links, and what a link brought is delivered to local clients
only: published messages and topic requests cross exactly one link, as NATS routes do,
so boxes that should all hear each other are linked in a full mesh, and any topology,
loops included, delivers each message once. Link subscriptions use the `block` policy: a
slow link slows its publishers (and is cut off as a slow consumer if it stays stuck)
instead of losing messages.

**Relaying.** A `deliver` that arrives on a link for our subscription of key (pattern,
group) is published here again to exactly the local subscriptions of that key: a plain
key reaches every local subscriber with that pattern once, a group key one member of
that group (the far side already chose this box for it). A request to a topic goes to a
local responder first, then over a link. A request with a `destination` node that is
not here goes on over a link (the lowest-numbered other than the one it came from), hop
by hop: what goes out on a link carries a relayed head (`forward_for_source`,
`forward_for_connection`, `hops` + 1) and is refused past the hop limit (`no_responders`
"hop limit"), so a loop of links cannot bounce it forever. Streams do not cross links:
their relays serve the nodes of one endpoint. A second link to the same
endpoint, or one to itself, is refused with `link_refused`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping

from appliance.bus import messages as m
from appliance.bus.peer import Peer
from appliance.bus.router import Delivery, Router

log = logging.getLogger("appliance.bus")

Key = tuple[str, str | None]  # (pattern, queue group)


class LinkInterest:
    def __init__(self, router: Router, peers: Mapping[int, Peer]) -> None:
        self._router = router
        self._peers = peers
        self._sids = itertools.count(1)
        self._by_key: dict[int, dict[Key, int]] = {}  # link -> key -> our sid on it
        self._by_sid: dict[int, dict[int, Key]] = {}  # link -> our sid -> key

    def sync(self) -> None:
        """Bring every link's subscriptions in line with the interest here."""
        interest = self._router.interest()
        for link in self._router.links:
            peer = self._peers.get(link)
            if peer is None or not peer.established:
                continue
            wanted = interest
            have = self._by_key.setdefault(link, {})
            sids = self._by_sid.setdefault(link, {})
            for key in wanted - have.keys():
                sid = next(self._sids)
                have[key], sids[sid] = sid, key
                pattern, group = key
                subscribe = m.Subscribe(sid=sid, pattern=pattern, group=group, policy="block")
                peer.queue_control(m.Message(subscribe))
            for key in have.keys() - wanted:
                sid = have.pop(key)
                del sids[sid]
                peer.queue_control(m.Message(m.Unsubscribe(sid=sid)))

    def forget(self, link: int) -> None:
        self._by_key.pop(link, None)
        self._by_sid.pop(link, None)

    def deliveries(self, peer: Peer, head: m.Head, deliver: m.Deliver) -> list[Delivery]:
        """Where a message the link `peer` delivered to us goes here."""
        key = self._by_sid.get(peer.id, {}).get(deliver.sid)
        if key is None:
            return []  # unsubscribed meanwhile: it was in flight
        publish = m.Publish(topic=deliver.topic, data=deliver.data, headers=deliver.headers)
        return list(self._router.publish(peer.id, publish, head, only=key).deliveries)

    def subscriptions(self, link: int) -> dict[Key, int]:
        return dict(self._by_key.get(link, {}))
