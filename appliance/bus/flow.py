"""Flow control, sans-IO: the two ends of a numbered stream, and a subscriber's bounded queue.

**Streams.** Offsets count bytes from the stream's start. A `Packet` carries
`data` at `offset` (`fin` marks the last byte, or is an empty packet at the end). The
receiver's `Ack` carries `acknowledge_offset` — every byte before it has been *read by the
application* (so an acknowledgement is also the credit: the sender may have bytes up to
`acknowledge_offset + window` out) — and `received_max_offset`, the end of the highest
byte received. The largest acknowledgement wins; older ones are ignored.

`StreamSender` holds what was written until it is acknowledged: `write` takes what fits
in `buffer_limit` (0 means "wait for an acknowledgement"), `next_packet` hands out what
the window allows, `on_ack` releases acknowledged bytes. Our transports are ordered, so
bytes are lost only with a connection: after a reconnect `resume(acknowledge_offset)`
(the receiver says how far it got) makes everything after it go out again, go-back-N.
`rewind()` does the same on the driver's acknowledgement timeout. The receiver drops what
it already has, so a byte is delivered exactly once, in order.

`StreamReceiver` assembles packets in order (`receive`), keeps out-of-order data within
the window in at most `max_segments` pieces (beyond that it drops them: they are resent),
hands bytes out with `read`, and says when an acknowledgement is due (`take_ack`).

Errors are `FlowError` with a stable `code` (the close reason) and a finer `problem`:

    bad_ack          beyond_sent, received_beyond_sent, inconsistent, regressed, negative,
                     bad_window
    window_exceeded  beyond_window (stream data past the credit the receiver granted)
    bad_offset       out_of_range, beyond_final_size, final_size_changed

**Slow consumers.** `SubscriberQueue` is one subscription's bounded queue (messages and
bytes) with a policy (`SlowConsumer`) for when it is full: `BLOCK` refuses (`FULL`: the
publisher must wait), `DROP` drops the new message and counts it as a gap that the
consumer sees on the next message queued (`Queued.gap`), `LATEST` keeps one value per
topic (a newer one replaces the queued one in place, `Queued.superseded` counts them).
Nothing is dropped without being counted. One message always fits in an empty queue, so
a message larger than `max_bytes` cannot wedge it. Detecting a consumer that stays stuck
(how long `FULL` lasts) is the driver's, which owns the clock.

This module is one piece because the three share one concern, flow control of the bus.
"""

from __future__ import annotations

import bisect
import enum
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

MAX_OFFSET = 2**63 - 1  # offsets are signed 64-bit on the wire


class FlowError(ValueError):
    """The peer broke stream flow control. `code` is the close reason, `problem` precise."""

    def __init__(self, code: str, problem: str, message: str) -> None:
        super().__init__(f"{problem}: {message}")
        self.code = code
        self.problem = problem
        self.message = message


@dataclass(frozen=True)
class Packet:
    stream_id: int
    offset: int
    data: bytes
    fin: bool = False

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True)
class Ack:
    stream_id: int
    acknowledge_offset: int
    received_max_offset: int
    window: int


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be positive")
    return value


class StreamSender:
    def __init__(
        self,
        stream_id: int,
        *,
        window: int,
        buffer_limit: int | None = None,
        max_packet: int = 16384,
        start_offset: int = 0,
    ) -> None:
        self.stream_id = stream_id
        self.window = _positive("window", window)
        self.buffer_limit = _positive("buffer_limit", buffer_limit or window)
        self.max_packet = _positive("max_packet", max_packet)
        self._base = start_offset  # every byte before it is acknowledged
        self._next = start_offset  # the next byte to (re)send
        self._high = start_offset  # one past the highest byte ever sent
        self._buffer = bytearray()  # bytes from _base on
        self._final: int | None = None
        self._fin_sent = False

    @property
    def acknowledged(self) -> int:
        return self._base

    @property
    def sent(self) -> int:
        """One past the highest offset ever sent."""
        return self._high

    @property
    def written(self) -> int:
        return self._base + len(self._buffer)

    @property
    def writable(self) -> int:
        """How many bytes `write` takes now."""
        return 0 if self._final is not None else self.buffer_limit - len(self._buffer)

    @property
    def finished(self) -> bool:
        return self._final is not None

    @property
    def done(self) -> bool:
        """Finished, the end sent and every byte acknowledged."""
        return self._final is not None and self._base == self._final and self._fin_sent

    def write(self, data: bytes) -> int:
        """Buffer as much of `data` as fits; returns the count (0: wait for an ack)."""
        if self._final is not None:
            raise ValueError("the stream is finished")
        taken = min(len(data), self.writable)
        self._buffer += data[:taken]
        return taken

    def finish(self) -> None:
        """No more writes: the stream ends after what was written."""
        self._final = self.written

    def next_packet(self) -> Packet | None:
        """The next packet to send, or None when everything allowed is out."""
        limit = min(self.written, self._base + self.window)
        if self._next < limit:
            start = self._next - self._base
            data = bytes(self._buffer[start : start + min(limit - self._next, self.max_packet)])
            packet = Packet(self.stream_id, self._next, data, self._next + len(data) == self._final)
        elif self._next == self._final and not self._fin_sent:
            packet = Packet(self.stream_id, self._next, b"", True)
        else:
            return None
        self._next = packet.end
        self._high = max(self._high, self._next)
        self._fin_sent = self._fin_sent or packet.fin
        return packet

    def on_ack(
        self, acknowledge_offset: int, received_max_offset: int, window: int | None = None
    ) -> int:
        """Apply an acknowledgement; returns how many bytes it released (0 for an old one).
        `window`, when given, is the receiver's window from now on. FlowError `bad_ack` for
        offsets never sent or inconsistent ones."""
        self._check_ack(acknowledge_offset, received_max_offset)
        if window is not None:
            if window < 1:
                raise FlowError("bad_ack", "bad_window", f"window {window} is not positive")
            self.window = window
        released = acknowledge_offset - self._base
        if released <= 0:
            return 0
        del self._buffer[:released]
        self._base = acknowledge_offset
        self._next = max(self._next, self._base)
        return released

    def resume(self, acknowledge_offset: int) -> None:
        """After a reconnect: the receiver has everything before `acknowledge_offset`;
        send everything after it again. FlowError `bad_ack` `regressed` if it claims less
        than it acknowledged before (those bytes are gone)."""
        self._check_ack(acknowledge_offset, acknowledge_offset)
        if acknowledge_offset < self._base:
            raise FlowError(
                "bad_ack",
                "regressed",
                f"resume from {acknowledge_offset}, but {self._base} was acknowledged",
            )
        self.on_ack(acknowledge_offset, acknowledge_offset)
        self.rewind()

    def rewind(self) -> None:
        """Send every unacknowledged byte (and the end) again."""
        self._next = self._base
        self._fin_sent = False

    def _check_ack(self, ack: int, received_max: int) -> None:
        if ack < 0 or received_max < 0:
            raise FlowError("bad_ack", "negative", "offsets are not negative")
        if ack > self._high:
            raise FlowError(
                "bad_ack", "beyond_sent", f"acknowledge_offset {ack} > sent offset {self._high}"
            )
        if received_max > self._high:
            raise FlowError(
                "bad_ack",
                "received_beyond_sent",
                f"received_max_offset {received_max} > sent offset {self._high}",
            )
        if received_max < ack:
            raise FlowError(
                "bad_ack",
                "inconsistent",
                f"received_max_offset {received_max} < acknowledge_offset {ack}",
            )


class StreamReceiver:
    def __init__(
        self,
        stream_id: int,
        *,
        window: int,
        start_offset: int = 0,
        max_segments: int = 256,
        ack_every: int | None = None,
        manual_release: bool = False,
    ) -> None:
        self.stream_id = stream_id
        self.window = _positive("window", window)
        self.start_offset = start_offset
        self.max_segments = max_segments
        self.ack_every = _positive("ack_every", ack_every or max(1, window // 4))
        self._read = start_offset  # = acknowledge_offset: read and released
        self._taken = start_offset  # handed out by `read` (released later in manual mode)
        self.manual_release = manual_release
        self._assembled = start_offset  # bytes before it are in _ready or read
        self._ready = bytearray()
        self._starts: list[int] = []  # out-of-order pieces after _assembled, sorted
        self._pieces: dict[int, bytes] = {}
        self._received_max = start_offset
        self._final: int | None = None
        self._acked = start_offset
        self._ack_due = False
        self.duplicates = 0
        self.out_of_order = 0
        self.dropped = 0

    @property
    def acknowledge_offset(self) -> int:
        return self._read

    @property
    def received_max_offset(self) -> int:
        return self._received_max

    @property
    def readable(self) -> int:
        return len(self._ready)

    @property
    def finished(self) -> bool:
        """The whole stream has been read (and released)."""
        return self._final is not None and self._read == self._final

    def receive(self, packet: Packet) -> int:
        """Take a packet; returns how many bytes became readable. FlowError for a packet
        past the window, out of range, or contradicting the stream's end."""
        if packet.stream_id != self.stream_id:
            raise ValueError(f"packet of stream {packet.stream_id} given to {self.stream_id}")
        offset, end = packet.offset, packet.end
        if offset < 0 or end > MAX_OFFSET:
            raise FlowError("bad_offset", "out_of_range", f"offset {offset}, end {end}")
        if end > self._read + self.window:
            raise FlowError(
                "window_exceeded",
                "beyond_window",
                f"data up to {end}, window ends at {self._read + self.window}",
            )
        self._check_final(packet)
        if end <= self._assembled:  # nothing new (an empty fin only told us the end)
            self.duplicates += bool(packet.data)
            self._ack_due = True  # the sender may be resending for want of an ack
            return 0
        if offset > self._assembled:
            return self._store(offset, packet.data)
        self._received_max = max(self._received_max, end)
        before = len(self._ready)
        self._ready += packet.data[self._assembled - offset :]
        self._assembled = max(self._assembled, end)
        while self._starts and self._starts[0] <= self._assembled:
            start = self._starts.pop(0)
            piece = self._pieces.pop(start)
            if start + len(piece) > self._assembled:
                self._ready += piece[self._assembled - start :]
                self._assembled = start + len(piece)
        return len(self._ready) - before

    def _check_final(self, packet: Packet) -> None:
        if packet.fin:
            if self._final is not None and packet.end != self._final:
                raise FlowError(
                    "bad_offset",
                    "final_size_changed",
                    f"end {packet.end}, but the stream ended at {self._final}",
                )
            if packet.end < self._received_max:
                raise FlowError(
                    "bad_offset",
                    "final_size_changed",
                    f"end {packet.end}, but data up to {self._received_max} arrived",
                )
            self._final = packet.end
        elif self._final is not None and packet.end > self._final:
            raise FlowError(
                "bad_offset",
                "beyond_final_size",
                f"data up to {packet.end}, the stream ends at {self._final}",
            )

    def _store(self, offset: int, data: bytes) -> int:
        """Keep the parts of an out-of-order packet that fill holes."""
        self._ack_due = True  # a gap: tell the sender where we are
        end = offset + len(data)
        holes: list[tuple[int, int]] = []
        pos = offset
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0:
            pos = max(pos, self._starts[i] + len(self._pieces[self._starts[i]]))
        j = i + 1
        while pos < end:
            if j < len(self._starts) and self._starts[j] <= pos:
                pos = max(pos, self._starts[j] + len(self._pieces[self._starts[j]]))
                j += 1
                continue
            hole_end = min(end, self._starts[j]) if j < len(self._starts) else end
            holes.append((pos, hole_end))
            pos = hole_end
        if not holes:
            self.duplicates += 1
            return 0
        if len(self._starts) + len(holes) > self.max_segments:
            self.dropped += 1  # the sender resends it; memory stays bounded
            return 0
        self.out_of_order += 1
        self._received_max = max(self._received_max, end)
        for start, stop in holes:
            bisect.insort(self._starts, start)
            self._pieces[start] = data[start - offset : stop - offset]
        return 0

    @property
    def final(self) -> int | None:
        """The stream's length, once its end arrived."""
        return self._final

    @property
    def taken(self) -> int:
        """One past the last byte `read` handed out (the next read starts here)."""
        return self._taken

    def read(self, max_bytes: int | None = None) -> bytes:
        """Take in-order bytes (all of them, or at most `max_bytes`). They count as
        acknowledged from now on, or, with `manual_release`, once `release` says so."""
        count = len(self._ready) if max_bytes is None else min(max_bytes, len(self._ready))
        data = bytes(self._ready[:count])
        del self._ready[:count]
        self._taken += count
        if not self.manual_release:
            self._advance(self._taken)
        return data

    def release(self, offset: int) -> None:
        """Manual mode: every byte before `offset` (at most what was read) is done with
        and may be acknowledged; the window moves on."""
        self._advance(min(offset, self._taken))

    def _advance(self, offset: int) -> None:
        if offset <= self._read:
            return
        self._read = offset
        if (
            self.manual_release  # a release is the application's acknowledgement: sent now
            or self._read - self._acked >= self.ack_every
            or self._read == self._taken == self._assembled
        ):
            self._ack_due = True

    def acknowledgement(self) -> Ack:
        """The current acknowledgement (also what to resume from after a reconnect)."""
        return Ack(self.stream_id, self._read, self._received_max, self.window)

    def take_ack(self) -> Ack | None:
        """An acknowledgement if one is due: `ack_every` bytes read since the last one,
        everything readable read, or a duplicate or out-of-order packet seen."""
        if not self._ack_due:
            return None
        self._ack_due = False
        self._acked = self._read
        return self.acknowledgement()


# --- a subscriber's bounded queue ------------------------------------------------------------

T = TypeVar("T")


class SlowConsumer(enum.Enum):
    BLOCK = "block"
    DROP = "drop"
    LATEST = "latest"


class Offer(enum.Enum):
    ACCEPTED = "accepted"
    REPLACED = "replaced"  # LATEST: took the place of the queued value of its topic
    FULL = "full"  # BLOCK: not queued, the publisher must wait for room
    DROPPED = "dropped"  # DROP/LATEST: not queued, counted as a gap


@dataclass(frozen=True)
class Queued(Generic[T]):
    """A queued message. `gap`: messages dropped just before it. `superseded`: older
    values of its topic it replaced (LATEST)."""

    topic: str
    value: T
    size: int = 0
    gap: int = 0
    superseded: int = 0


class SubscriberQueue(Generic[T]):
    def __init__(
        self, policy: SlowConsumer, *, max_messages: int, max_bytes: int | None = None
    ) -> None:
        self.policy = policy
        self.max_messages = _positive("max_messages", max_messages)
        self.max_bytes = max_bytes
        self._fifo: deque[Queued[T]] = deque()  # BLOCK, DROP
        self._latest: OrderedDict[str, Queued[T]] = OrderedDict()  # LATEST
        self._bytes = 0
        self._pending_gap = 0
        self.dropped = 0
        self.superseded = 0

    def __len__(self) -> int:
        return len(self._latest) if self.policy is SlowConsumer.LATEST else len(self._fifo)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def pending_gap(self) -> int:
        """Messages dropped since the last one queued (the next one will carry them)."""
        return self._pending_gap

    def _fits(self, size: int, freed_count: int = 0, freed_bytes: int = 0) -> bool:
        count = len(self) - freed_count
        if count == 0:
            return True  # one message always fits, whatever its size
        if count >= self.max_messages:
            return False
        return self.max_bytes is None or self._bytes - freed_bytes + size <= self.max_bytes

    @property
    def full(self) -> bool:
        """Whether a message of size 0 would be refused now."""
        return not self._fits(0)

    def offer(self, topic: str, value: T, size: int = 0) -> Offer:
        """Queue a message if the policy allows; says what happened."""
        if self.policy is SlowConsumer.LATEST and topic in self._latest:
            old = self._latest[topic]
            if self._fits(size, 1, old.size):
                self._latest[topic] = Queued(topic, value, size, old.gap, old.superseded + 1)
                self._bytes += size - old.size
                self.superseded += 1
                return Offer.REPLACED
            del self._latest[topic]  # never leave a stale value queued
            self._bytes -= old.size
            self._pending_gap += old.gap  # the gap it carried moves on
            self.superseded += 1
        if not self._fits(size):
            if self.policy is SlowConsumer.BLOCK:
                return Offer.FULL
            self._pending_gap += 1
            self.dropped += 1
            return Offer.DROPPED
        entry = Queued(topic, value, size, self._pending_gap)
        self._pending_gap = 0
        if self.policy is SlowConsumer.LATEST:
            self._latest[topic] = entry
        else:
            self._fifo.append(entry)
        self._bytes += size
        return Offer.ACCEPTED

    def take(self) -> Queued[T] | None:
        """The oldest queued message, or None."""
        if self.policy is SlowConsumer.LATEST:
            if not self._latest:
                return None
            _, entry = self._latest.popitem(last=False)
        else:
            if not self._fifo:
                return None
            entry = self._fifo.popleft()
        self._bytes -= entry.size
        return entry

    def take_gap(self) -> int:
        """Claim the pending gap (to send a gap marker while no message follows)."""
        gap, self._pending_gap = self._pending_gap, 0
        return gap
