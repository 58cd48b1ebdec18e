"""Streams between clients: the endpoint's store-and-forward relays.

A client sends a stream to another node by putting the node's name in the head
`destination` of its packets. The endpoint is the receiver of that stream on the sender's
connection and the sender of a new stream on the destination's connection; between the
two sits a `Relay` whose `StreamSender` holds every byte the destination has not yet
acknowledged (at most `buffer` bytes: the endpoint reads from the sender only as much as
fits, so the sender's window pushes back all the way).

    sender ──packets──▶ [endpoint: receiver | Relay.sender (≤ buffer bytes) ] ──▶ destination
           ◀──acks────                                                     ◀──acks──

**The destination goes away** (its process is killed, its connection drops): the relay
keeps its sender with the unacknowledged bytes for `keep` seconds. When a connection with
the destination's node name comes back (its hello or a `register` names it: `on_named`),
the relay resumes on it from the last acknowledged offset (the new connection's receiver
starts there: `StreamData.start_offset`), so with a client that acknowledges only what it
has processed (manual release) nothing is lost and nothing is delivered twice. After
`keep` seconds the relay is dropped and the sender gets `stop_sending` with
`stream_expired`.

**The sender goes away** (or resets): the relay delivers what it holds, then
`reset_stream` with `sender_gone` tells the destination the stream will not end.

**Completion is end to end.** The endpoint acknowledges the sender's bytes as they enter
the relay (that is the flow control between the two hops), except the last byte taken
(the end may follow it): the stream's last byte is released only when the destination has
acknowledged everything, so the sender's
stream is done (its `finish()` returns) only once the receiver has it all, and a sender
still learns of `stream_expired`.

**Refusals**: a stream without a destination, or to a node that is not connected, gets
`stop_sending` with `no_destination`; more than `max_relays` relays, `limit_exceeded`; the
destination's `stop_sending` is passed back to the sender.

Everything here is synchronous: it moves bytes between `Connection`s and wakes the
peers' writers, never waits, so the endpoint calls it from its reader tasks and its timer.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from appliance.bus import events as ev
from appliance.bus import messages as m
from appliance.bus.flow import StreamSender
from appliance.bus.peer import Peer

log = logging.getLogger("appliance.bus")


@dataclass
class Relay:
    id: int  # the stream's id toward the destination, the same on each of its connections
    source: int | None  # the sender's connection, None once it went away
    source_stream: int  # the sender's id for the stream
    source_node: str | None
    destination: str  # node name
    sender: StreamSender
    target: int | None = None  # the destination's current connection
    detached_at: float | None = None  # when the destination went away
    source_done: bool = False  # every byte of the sender's stream was read (or it is gone)
    source_gone: bool = False
    head: m.Head = field(default_factory=m.Head)


class StreamRelays:
    def __init__(
        self,
        peers: Mapping[int, Peer],
        node_connection: Callable[[str], int | None],
        clock: Callable[[], float],
        *,
        buffer: int = 256 << 10,
        keep: float = 60.0,
        max_relays: int = 256,
        max_packet: int = 16384,
    ) -> None:
        self._peers = peers
        self._node_connection = node_connection
        self._clock = clock
        self.buffer = buffer
        self.keep = keep
        self.max_relays = max_relays
        self.max_packet = max_packet
        self._ids = itertools.count(1)
        self._relays: dict[int, Relay] = {}
        self._by_source: dict[tuple[int, int], int] = {}
        self._by_target: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self._relays)

    @property
    def waiting(self) -> int:
        """Relays holding data for a destination that is away."""
        return sum(1 for r in self._relays.values() if r.target is None)

    # --- what a sender's connection reported ------------------------------------------------

    def on_stream_data(self, peer: Peer, event: ev.StreamData) -> None:
        key = (peer.id, event.stream_id)
        relay_id = self._by_source.get(key)
        if relay_id is None:
            relay = self._open(peer, event)
            if relay is None:
                return
        else:
            relay = self._relays[relay_id]
        self._pump(relay)

    def on_stream_reset(self, peer: Peer, event: ev.StreamReset) -> None:
        relay_id = self._by_source.get((peer.id, event.stream_id))
        if relay_id is not None:
            self._pump(self._relays[relay_id])  # what arrived before the reset still goes
            self._source_ended(self._relays[relay_id])

    # --- what a destination's connection reported -------------------------------------------

    def on_stream_acked(self, peer: Peer, event: ev.StreamAcked) -> None:
        relay_id = self._by_target.get((peer.id, event.stream_id))
        if relay_id is None:
            return
        relay = self._relays[relay_id]
        if event.done:
            self._complete_source(relay)
            self._drop(relay)
            return
        self._pump(relay)
        if relay.source_gone and relay.sender.acknowledged == relay.sender.written:
            self._reset_target(relay)

    def on_stream_stopped(self, peer: Peer, event: ev.StreamStopped) -> None:
        relay_id = self._by_target.get((peer.id, event.stream_id))
        if relay_id is None:
            return
        relay = self._relays[relay_id]
        relay.target = None  # the destination's side is already gone
        self._stop_source(relay, event.reason, event.text)
        self._drop(relay)

    # --- connections coming and going -------------------------------------------------------

    def on_named(self, peer: Peer) -> None:
        """A connection now holds a node name (from its hello or a `register`): resume the
        relays waiting for that name on it. Relays already flowing to a connection stay
        with it when it registers another name or deregisters: a name is how a stream
        finds its destination, and the receiving application is reading it there."""
        node = peer.conn.peer_node
        if node is None:
            return
        for relay in list(self._relays.values()):
            if relay.target is None and relay.destination == node.name:
                self._attach(relay, peer)

    def on_gone(self, peer: Peer) -> None:
        for relay in list(self._relays.values()):
            if relay.target == peer.id:
                self._by_target.pop((peer.id, relay.id), None)
                relay.target, relay.detached_at = None, self._clock()
                log.info(
                    "bus stream %d to %s: the destination went away at offset %d; keeping "
                    "%d unacknowledged bytes for %.0f s",
                    relay.id,
                    relay.destination,
                    relay.sender.acknowledged,
                    relay.sender.written - relay.sender.acknowledged,
                    self.keep,
                )
            if relay.source == peer.id:
                self._by_source.pop((peer.id, relay.source_stream), None)
                relay.source = None
                self._source_ended(relay)

    def expire(self) -> int:
        """Drop relays whose destination stayed away `keep` seconds; returns how many."""
        now, dropped = self._clock(), 0
        for relay in list(self._relays.values()):
            away = relay.detached_at if relay.target is None else None
            if away is not None and now - away >= self.keep:
                self._stop_source(
                    relay,
                    "stream_expired",
                    f"{relay.destination} did not come back within {self.keep:g} s",
                )
                self._drop(relay)
                dropped += 1
        return dropped

    # --- the mechanics ----------------------------------------------------------------------

    def _open(self, peer: Peer, event: ev.StreamData) -> Relay | None:
        destination = event.head.destination
        refusal = None
        if destination is None:
            refusal = ("no_destination", "a stream needs a destination node in its head")
        elif self._node_connection(destination) is None:
            refusal = ("no_destination", f"node {destination} is not connected")
        elif len(self._relays) >= self.max_relays:
            refusal = ("limit_exceeded", f"at most {self.max_relays} streams in relay")
        elif event.start_offset != 0:
            refusal = ("bad_offset", "a stream starts at offset 0")
        if refusal is not None:
            peer.conn.stream_stop(event.stream_id, *refusal)
            peer.wake.set()
            return None
        assert destination is not None
        source_node = peer.conn.peer_node.name if peer.conn.peer_node else None
        relay = Relay(
            id=next(self._ids),
            source=peer.id,
            source_stream=event.stream_id,
            source_node=source_node,
            destination=destination,
            sender=StreamSender(
                0,  # the Packet's id is replaced by the connection's
                window=peer.conn.stream_window,
                buffer_limit=self.buffer,
                max_packet=self.max_packet,
            ),
            head=m.Head(source=source_node, destination=destination),
        )
        relay.sender.stream_id = relay.id
        self._relays[relay.id] = relay
        self._by_source[(peer.id, event.stream_id)] = relay.id
        target = self._peers.get(self._node_connection(destination))  # type: ignore[arg-type]
        if target is not None:
            self._attach(relay, target)
        else:
            relay.detached_at = self._clock()
        return relay

    def _attach(self, relay: Relay, peer: Peer) -> None:
        relay.target, relay.detached_at = peer.id, None
        self._by_target[(peer.id, relay.id)] = relay.id
        peer.conn.attach_stream(relay.id, relay.sender, relay.head)
        peer.wake.set()
        if relay.source_gone and relay.sender.acknowledged == relay.sender.written:
            self._reset_target(relay)

    def _pump(self, relay: Relay) -> None:
        """Move what fits from the sender's connection into the relay, and on."""
        source = self._peers.get(relay.source) if relay.source is not None else None
        if source is not None and not relay.source_done:
            receiver = source.conn.stream_receiving(relay.source_stream)
            if receiver is None:
                relay.source_done = True
            else:
                room = relay.sender.writable
                if room and receiver.readable:
                    relay.sender.write(source.conn.stream_read(relay.source_stream, room))
                if receiver.final is not None and receiver.taken == receiver.final:
                    relay.source_done = True
                # The last byte taken stays unreleased: the end may come after it.
                source.conn.stream_release(relay.source_stream, receiver.taken - 1)
                source.wake.set()  # its acknowledgements
            if relay.source_done and not relay.sender.finished:
                relay.sender.finish()
        target = self._peers.get(relay.target) if relay.target is not None else None
        if target is not None and target.conn.stream_sending(relay.id):
            target.conn.stream_flush(relay.id)
            target.wake.set()

    def _complete_source(self, relay: Relay) -> None:
        """The destination acknowledged the whole stream: release the sender's last byte,
        held back until now so that its stream completes only end to end."""
        source = self._peers.get(relay.source) if relay.source is not None else None
        if source is not None:
            source.conn.stream_release(relay.source_stream, relay.sender.acknowledged)
            source.wake.set()

    def _source_ended(self, relay: Relay) -> None:
        """The sender reset the stream or went away before its end."""
        if relay.source_done and relay.sender.finished:
            return  # it had finished: the relay completes on its own
        relay.source_gone = True
        if relay.source is not None:
            self._by_source.pop((relay.source, relay.source_stream), None)
            relay.source = None
        if relay.target is not None and relay.sender.acknowledged == relay.sender.written:
            self._reset_target(relay)

    def _reset_target(self, relay: Relay) -> None:
        target = self._peers.get(relay.target) if relay.target is not None else None
        if target is not None:
            text = f"{relay.source_node or 'the sender'} went away before the stream's end"
            target.conn.stream_reset(relay.id, "sender_gone", text)
            target.wake.set()
        self._drop(relay)

    def _stop_source(self, relay: Relay, reason: str, text: str) -> None:
        source = self._peers.get(relay.source) if relay.source is not None else None
        if source is not None:
            source.conn.stream_stop(relay.source_stream, reason, text)
            source.wake.set()

    def _drop(self, relay: Relay) -> None:
        self._relays.pop(relay.id, None)
        if relay.source is not None:
            self._by_source.pop((relay.source, relay.source_stream), None)
        if relay.target is not None:
            self._by_target.pop((relay.target, relay.id), None)
