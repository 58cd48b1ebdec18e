"""A connection's numbered streams, sans-IO: stream ids mapped to the two ends in `flow`.

`Streams` turns wire `packet`/`ack`/`reset_stream`/`stop_sending` messages into calls on
`flow.StreamSender` and `flow.StreamReceiver` and back. Ids are chosen by the sender and
independent per direction: a `packet` or `reset_stream` is for a stream the peer sends (a
receiver, created on its first packet), an `ack` or `stop_sending` for one this side sends
(a sender, created by `open`, or `attach`ed when it outlives connections: the endpoint's
stream relays do that). The peer's mistakes raise `flow.FlowError` whose `code` is the
close reason (`bad_ack`, `window_exceeded`, `bad_offset`, `limit_exceeded`); ours raise
`LocalProtocolError`.

A receiver starts at the offset of the first packet it gets for an id: 0 for a new
stream, or where the previous connection's acknowledgements ended for a stream resumed
on a new connection (`StreamData.start_offset` says which). With `manual_release`, bytes
read count as acknowledged only once the application `release`s them, so a receiver that
dies while processing what it read gets those bytes again on its next connection.

Each sender may carry a head (`destination`, or the relayed `source`) that every one of
its packets repeats; the head of a receiving stream's first packet is kept and reported.
"""

from __future__ import annotations

from collections import OrderedDict

from appliance.bus import messages as m
from appliance.bus.events import StreamAcked, StreamData, StreamReset, StreamStopped
from appliance.bus.flow import FlowError, StreamReceiver, StreamSender
from appliance.bus.flow import Packet as FlowPacket
from appliance.bus.reasons import BY_CODE, LocalProtocolError, reason_for

NO_HEAD = m.Head()
MAX_REMEMBERED_STOPS = 64
Outgoing = tuple[m.Body, m.Head]


def _reason(code: int) -> str:
    reason = BY_CODE.get(code)
    return reason.name if reason else "unknown"


class Streams:
    """`window`: what this side grants for the streams it receives, and the window its own
    streams assume until the first acknowledgement says otherwise."""

    def __init__(self, *, window: int, max_streams: int, manual_release: bool = False) -> None:
        self.window = window
        self.max_streams = max_streams
        self.manual_release = manual_release
        self._senders: dict[int, StreamSender] = {}
        self._heads: dict[int, m.Head] = {}  # sending stream -> the head its packets carry
        self._receivers: dict[int, StreamReceiver] = {}
        self._first_heads: dict[int, m.Head] = {}  # receiving stream -> its first head
        self._fins: set[int] = set()  # receiving streams whose end arrived
        self._resets: set[int] = set()  # receiving streams the peer abandoned
        self._times: dict[int, int] = {}  # stream -> its last packet's time_us, to echo
        # Streams we refused (stop_sending): their packets still in flight are dropped.
        self._stopped: OrderedDict[int, None] = OrderedDict()

    # --- sending ---------------------------------------------------------------------------

    def open(
        self,
        stream_id: int,
        *,
        max_packet: int,
        buffer_limit: int | None = None,
        head: m.Head | None = None,
    ) -> None:
        sender = StreamSender(
            stream_id, window=self.window, buffer_limit=buffer_limit, max_packet=max_packet
        )
        self.attach(stream_id, sender, head)

    def attach(self, stream_id: int, sender: StreamSender, head: m.Head | None = None) -> None:
        """Send `sender` (kept by the caller across connections) as stream `stream_id`."""
        if stream_id in self._senders:
            raise LocalProtocolError(f"stream {stream_id} is already open")
        if len(self._senders) >= self.max_streams:
            raise LocalProtocolError(f"at most {self.max_streams} streams")
        self._senders[stream_id] = sender
        self._heads[stream_id] = head or NO_HEAD

    def write(
        self, stream_id: int, data: bytes, *, fin: bool, now_us: int
    ) -> tuple[int, list[Outgoing]]:
        """Buffer what fits; (bytes taken, packets the window allows now)."""
        sender = self.sender(stream_id)
        taken = sender.write(data) if data else 0
        if fin and taken == len(data):
            sender.finish()
        return taken, self.packets(stream_id, now_us)

    def sender(self, stream_id: int) -> StreamSender:
        sender = self._senders.get(stream_id)
        if sender is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return sender

    def sending(self, stream_id: int) -> bool:
        return stream_id in self._senders

    def packets(self, stream_id: int, now_us: int) -> list[Outgoing]:
        """The packets stream `stream_id` may send now (after a write, ack or rewind)."""
        sender = self.sender(stream_id)
        head = self._heads[stream_id]
        out: list[Outgoing] = []
        while (p := sender.next_packet()) is not None:
            packet = m.Packet(
                stream_id=p.stream_id, offset=p.offset, data=p.data, fin=p.fin, time_us=now_us
            )
            out.append((packet, head))
        return out

    def reset(self, stream_id: int, reason: str, text: str) -> Outgoing | None:
        """Abandon a stream we send: the `reset_stream` to queue (None if not open)."""
        if self._senders.pop(stream_id, None) is None:
            return None
        self._heads.pop(stream_id, None)
        body = m.ResetStream(stream_id=stream_id, code=reason_for(reason).code, text=text)
        return body, NO_HEAD

    def on_ack(self, ack: m.Acknowledge, now_us: int) -> tuple[StreamAcked | None, list[Outgoing]]:
        sender = self._senders.get(ack.stream_id)
        if sender is None:
            raise FlowError("bad_ack", "unknown_stream", f"stream {ack.stream_id} was never sent")
        released = sender.on_ack(
            ack.acknowledge_offset, ack.received_max_offset, ack.window or None
        )
        packets = self.packets(ack.stream_id, now_us)
        done = sender.done
        if done:
            del self._senders[ack.stream_id]
            self._heads.pop(ack.stream_id, None)
        event = StreamAcked(ack.stream_id, released, done) if released or done else None
        return event, packets

    def on_stop_sending(self, stop: m.StopSending) -> StreamStopped | None:
        """The peer refuses the rest of a stream we send (None: not ours, already gone)."""
        if self._senders.pop(stop.stream_id, None) is None:
            return None
        self._heads.pop(stop.stream_id, None)
        return StreamStopped(stop.stream_id, stop.code, _reason(stop.code), stop.text)

    # --- receiving -------------------------------------------------------------------------

    def on_packet(
        self, packet: m.Packet, head: m.Head
    ) -> tuple[StreamData | None, m.Acknowledge | None]:
        receiver = self._receivers.get(packet.stream_id)
        if receiver is None:
            if packet.stream_id in self._stopped and packet.offset > 0:
                return None, None  # in flight when we refused it: dropped
            self._stopped.pop(packet.stream_id, None)
            if len(self._receivers) >= self.max_streams:
                raise FlowError("limit_exceeded", "streams", f"at most {self.max_streams} streams")
            receiver = StreamReceiver(
                packet.stream_id,
                window=self.window,
                start_offset=packet.offset,
                manual_release=self.manual_release,
            )
            self._receivers[packet.stream_id] = receiver
            self._first_heads[packet.stream_id] = head
        became = receiver.receive(
            FlowPacket(packet.stream_id, packet.offset, packet.data, packet.fin)
        )
        if packet.time_us is not None:
            self._times[packet.stream_id] = packet.time_us
        if packet.fin:
            self._fins.add(packet.stream_id)
        event = None
        if became or packet.fin:
            event = StreamData(
                packet.stream_id,
                receiver.readable,
                packet.stream_id in self._fins,
                self._first_heads[packet.stream_id],
                receiver.start_offset,
            )
        ack = self._ack(receiver)  # due at once after a duplicate or a gap
        if receiver.finished:
            # The end came after every byte was read (and released): nothing is left to
            # read, so the stream is forgotten now, as `read` and `release` forget it.
            self._forget(packet.stream_id)
        return event, ack

    def on_reset(self, reset: m.ResetStream) -> StreamReset | None:
        """The peer abandoned a stream it sends; what is readable stays readable."""
        receiver = self._receivers.get(reset.stream_id)
        if receiver is None:
            return None
        self._resets.add(reset.stream_id)
        if not receiver.readable:
            self._forget(reset.stream_id)
        return StreamReset(reset.stream_id, reset.code, _reason(reset.code), reset.text)

    def read(
        self, stream_id: int, max_bytes: int | None = None
    ) -> tuple[bytes, m.Acknowledge | None]:
        """Take readable bytes (this acknowledges them, or `release` will); a finished
        or reset stream is forgotten once fully read."""
        receiver = self._receivers.get(stream_id)
        if receiver is None:
            return b"", None
        data = receiver.read(max_bytes)
        ack = self._ack(receiver)
        if receiver.finished or (stream_id in self._resets and not receiver.readable):
            self._forget(stream_id)
        return data, ack

    def release(self, stream_id: int, offset: int) -> m.Acknowledge | None:
        """Manual release: bytes before `offset` are done with (an ack when due)."""
        receiver = self._receivers.get(stream_id)
        if receiver is None:
            return None
        receiver.release(offset)
        ack = self._ack(receiver)
        if receiver.finished:
            self._forget(stream_id)
        return ack

    def stop(self, stream_id: int, reason: str, text: str) -> Outgoing | None:
        """Refuse the rest of a stream the peer sends: the `stop_sending` to queue."""
        if self._receivers.get(stream_id) is None:
            return None
        self._forget(stream_id)
        self._stopped[stream_id] = None
        while len(self._stopped) > MAX_REMEMBERED_STOPS:
            self._stopped.popitem(last=False)
        body = m.StopSending(stream_id=stream_id, code=reason_for(reason).code, text=text)
        return body, NO_HEAD

    def receiving(self, stream_id: int) -> StreamReceiver | None:
        return self._receivers.get(stream_id)

    def _forget(self, stream_id: int) -> None:
        self._receivers.pop(stream_id, None)
        self._first_heads.pop(stream_id, None)
        self._fins.discard(stream_id)
        self._resets.discard(stream_id)
        self._times.pop(stream_id, None)

    def _ack(self, receiver: StreamReceiver) -> m.Acknowledge | None:
        ack = receiver.take_ack()
        if ack is None:
            return None
        return m.Acknowledge(
            stream_id=ack.stream_id,
            acknowledge_offset=ack.acknowledge_offset,
            received_max_offset=ack.received_max_offset,
            window=ack.window,
            time_us=self._times.get(ack.stream_id),
        )
