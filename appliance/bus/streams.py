"""A connection's numbered streams, sans-IO: stream ids mapped to the two ends in `flow`.

`Streams` turns wire `packet`/`ack` messages into calls on `flow.StreamSender` and
`flow.StreamReceiver` and back. Ids are chosen by the sender and independent per
direction: a `packet` is for a stream the peer sends (a receiver, created on its first
packet), an `ack` for one this side sends (a sender, created by `open`). The peer's
mistakes raise `flow.FlowError` whose `code` is the close reason (`bad_ack`,
`window_exceeded`, `bad_offset`, `limit_exceeded`); ours raise `LocalProtocolError`.
"""

from __future__ import annotations

from appliance.bus import messages as m
from appliance.bus.events import StreamAcked, StreamData
from appliance.bus.flow import FlowError, StreamReceiver, StreamSender
from appliance.bus.flow import Packet as FlowPacket
from appliance.bus.reasons import LocalProtocolError


class Streams:
    """`window`: what this side grants for the streams it receives, and the window its own
    streams assume until the first acknowledgement says otherwise."""

    def __init__(self, *, window: int, max_streams: int) -> None:
        self.window = window
        self.max_streams = max_streams
        self._senders: dict[int, StreamSender] = {}
        self._receivers: dict[int, StreamReceiver] = {}
        self._fins: set[int] = set()  # receiving streams whose end arrived
        self._times: dict[int, int] = {}  # stream -> its last packet's time_us, to echo

    # --- sending ---------------------------------------------------------------------------

    def open(self, stream_id: int, *, max_packet: int, buffer_limit: int | None = None) -> None:
        if stream_id in self._senders:
            raise LocalProtocolError(f"stream {stream_id} is already open")
        if len(self._senders) >= self.max_streams:
            raise LocalProtocolError(f"at most {self.max_streams} streams")
        self._senders[stream_id] = StreamSender(
            stream_id, window=self.window, buffer_limit=buffer_limit, max_packet=max_packet
        )

    def write(
        self, stream_id: int, data: bytes, *, fin: bool, now_us: int
    ) -> tuple[int, list[m.Packet]]:
        """Buffer what fits; (bytes taken, packets the window allows now)."""
        sender = self.sender(stream_id)
        taken = sender.write(data) if data else 0
        if fin and taken == len(data):
            sender.finish()
        return taken, self._packets(sender, now_us)

    def sender(self, stream_id: int) -> StreamSender:
        sender = self._senders.get(stream_id)
        if sender is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return sender

    def on_ack(self, ack: m.Acknowledge, now_us: int) -> tuple[StreamAcked | None, list[m.Packet]]:
        sender = self._senders.get(ack.stream_id)
        if sender is None:
            raise FlowError("bad_ack", "unknown_stream", f"stream {ack.stream_id} was never sent")
        released = sender.on_ack(
            ack.acknowledge_offset, ack.received_max_offset, ack.window or None
        )
        packets = self._packets(sender, now_us)
        done = sender.done
        if done:
            del self._senders[ack.stream_id]
        event = StreamAcked(ack.stream_id, released, done) if released or done else None
        return event, packets

    @staticmethod
    def _packets(sender: StreamSender, now_us: int) -> list[m.Packet]:
        out = []
        while (p := sender.next_packet()) is not None:
            out.append(
                m.Packet(
                    stream_id=p.stream_id, offset=p.offset, data=p.data, fin=p.fin, time_us=now_us
                )
            )
        return out

    # --- receiving -------------------------------------------------------------------------

    def on_packet(self, packet: m.Packet) -> tuple[StreamData | None, m.Acknowledge | None]:
        receiver = self._receivers.get(packet.stream_id)
        if receiver is None:
            if len(self._receivers) >= self.max_streams:
                raise FlowError("limit_exceeded", "streams", f"at most {self.max_streams} streams")
            receiver = StreamReceiver(packet.stream_id, window=self.window)
            self._receivers[packet.stream_id] = receiver
        became = receiver.receive(
            FlowPacket(packet.stream_id, packet.offset, packet.data, packet.fin)
        )
        if packet.time_us is not None:
            self._times[packet.stream_id] = packet.time_us
        if packet.fin:
            self._fins.add(packet.stream_id)
        event = None
        if became or packet.fin:
            event = StreamData(packet.stream_id, receiver.readable, packet.stream_id in self._fins)
        return event, self._ack(receiver)  # due at once after a duplicate or a gap

    def read(
        self, stream_id: int, max_bytes: int | None = None
    ) -> tuple[bytes, m.Acknowledge | None]:
        """Take readable bytes (this acknowledges them); a finished stream is forgotten
        once fully read."""
        receiver = self._receivers.get(stream_id)
        if receiver is None:
            return b"", None
        data = receiver.read(max_bytes)
        ack = self._ack(receiver)
        if receiver.finished:
            del self._receivers[stream_id]
            self._fins.discard(stream_id)
            self._times.pop(stream_id, None)
        return data, ack

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
