"""Stream flow control back to back (no sockets), and the slow-consumer queue policies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from appliance.bus.flow import (
    Ack,
    FlowError,
    Offer,
    Packet,
    Queued,
    SlowConsumer,
    StreamReceiver,
    StreamSender,
    SubscriberQueue,
)


def drain(sender: StreamSender) -> list[Packet]:
    packets = []
    while (packet := sender.next_packet()) is not None:
        packets.append(packet)
    return packets


# --- sender -------------------------------------------------------------------------------


def test_sender_window_and_buffer():
    sender = StreamSender(1, window=10, buffer_limit=25, max_packet=4)
    assert sender.write(b"x" * 30) == 25
    assert sender.writable == 0 and sender.write(b"more") == 0
    packets = drain(sender)
    assert [(p.offset, len(p.data)) for p in packets] == [(0, 4), (4, 4), (8, 2)]
    assert sender.sent == 10 and sender.acknowledged == 0
    assert sender.on_ack(6, 10) == 6
    assert sender.writable == 6
    assert [(p.offset, len(p.data)) for p in drain(sender)] == [(10, 4), (14, 2)]
    assert sender.on_ack(6, 10) == 0  # an old one changes nothing
    assert sender.on_ack(3, 10) == 0  # an older one neither: the largest wins
    assert sender.acknowledged == 6


def test_sender_takes_the_window_from_acks():
    sender = StreamSender(1, window=4, buffer_limit=16)
    sender.write(b"x" * 4)
    drain(sender)
    sender.on_ack(2, 4, window=2)  # shrunk: nothing more until acknowledged
    sender.write(b"y" * 4)
    assert drain(sender) == []
    sender.on_ack(4, 4, window=8)
    assert [(p.offset, p.end) for p in drain(sender)] == [(4, 8)]
    with pytest.raises(FlowError) as caught:
        sender.on_ack(4, 4, window=0)
    assert (caught.value.code, caught.value.problem) == ("bad_ack", "bad_window")


def test_sender_fin():
    sender = StreamSender(7, window=100)
    sender.write(b"abc")
    sender.finish()
    assert sender.finished and sender.writable == 0
    with pytest.raises(ValueError, match="finished"):
        sender.write(b"x")
    assert drain(sender) == [Packet(7, 0, b"abc", fin=True)]
    assert not sender.done
    sender.on_ack(3, 3)
    assert sender.done


def test_sender_fin_after_everything_was_sent_is_an_empty_packet():
    sender = StreamSender(7, window=100)
    sender.write(b"abc")
    assert drain(sender) == [Packet(7, 0, b"abc")]
    sender.finish()
    assert drain(sender) == [Packet(7, 3, b"", fin=True)]
    assert drain(sender) == []
    sender.on_ack(3, 3)
    assert sender.done
    sender.rewind()  # the receiver may not have seen the end: it goes again
    assert not sender.done
    assert drain(sender) == [Packet(7, 3, b"", fin=True)]


@pytest.mark.parametrize(
    ("ack", "received_max", "problem"),
    [
        (11, 11, "beyond_sent"),
        (5, 11, "received_beyond_sent"),
        (6, 5, "inconsistent"),
        (-1, 5, "negative"),
        (0, -1, "negative"),
    ],
)
def test_sender_refuses_acks_for_offsets_never_sent(ack, received_max, problem):
    sender = StreamSender(1, window=10)
    sender.write(b"x" * 20)
    drain(sender)  # 10 sent
    with pytest.raises(FlowError) as caught:
        sender.on_ack(ack, received_max)
    assert caught.value.code == "bad_ack"
    assert caught.value.problem == problem
    assert sender.acknowledged == 0  # and nothing changed


def test_sender_resume_after_reconnect():
    sender = StreamSender(1, window=100, max_packet=10)
    sender.write(bytes(range(30)))
    drain(sender)
    sender.on_ack(5, 30)
    sender.resume(12)  # the receiver (maybe a new process) has everything before 12
    assert sender.acknowledged == 12
    packets = drain(sender)
    assert [(p.offset, p.end) for p in packets] == [(12, 22), (22, 30)]
    assert packets[0].data == bytes(range(12, 22))
    with pytest.raises(FlowError) as caught:
        sender.resume(4)
    assert (caught.value.code, caught.value.problem) == ("bad_ack", "regressed")
    with pytest.raises(FlowError) as caught:
        sender.resume(31)
    assert (caught.value.code, caught.value.problem) == ("bad_ack", "beyond_sent")


def test_sender_parameters():
    for bad in ({"window": 0}, {"window": 4, "max_packet": 0}):
        with pytest.raises(ValueError):
            StreamSender(1, **bad)
    sender = StreamSender(1, window=8, start_offset=100)
    sender.write(b"ab")
    assert drain(sender) == [Packet(1, 100, b"ab")]


# --- receiver -----------------------------------------------------------------------------


def test_receiver_in_order_and_acks():
    receiver = StreamReceiver(1, window=16, ack_every=4)
    assert receiver.take_ack() is None
    assert receiver.receive(Packet(1, 0, b"abc")) == 3
    assert receiver.take_ack() is None  # nothing read yet: no credit to return
    assert receiver.read(2) == b"ab"
    assert receiver.take_ack() is None  # 2 < ack_every and more is readable
    assert receiver.read() == b"c"
    assert receiver.take_ack() == Ack(1, 3, 3, 16)  # drained
    assert receiver.take_ack() is None
    receiver.receive(Packet(1, 3, b"defgh"))
    assert receiver.read(4) == b"defg"
    assert receiver.take_ack() == Ack(1, 7, 8, 16)  # ack_every reached


def test_receiver_out_of_order_and_duplicates():
    receiver = StreamReceiver(1, window=100)
    assert receiver.receive(Packet(1, 6, b"ghi")) == 0
    assert receiver.received_max_offset == 9
    assert receiver.take_ack() == Ack(1, 0, 9, 100)  # a gap: tell the sender
    assert receiver.receive(Packet(1, 3, b"def")) == 0
    assert receiver.receive(Packet(1, 4, b"efg")) == 0  # already held
    assert receiver.duplicates == 1
    assert receiver.receive(Packet(1, 0, b"abcd")) == 9
    assert receiver.read() == b"abcdefghi"
    assert receiver.receive(Packet(1, 2, b"cd")) == 0
    assert receiver.duplicates == 2
    assert receiver.take_ack() == Ack(1, 9, 9, 100)
    assert receiver.receive(Packet(1, 7, b"hijk")) == 2  # overlapping the read part
    assert receiver.read() == b"jk"


def test_receiver_overlapping_pieces_fill_only_holes():
    receiver = StreamReceiver(1, window=100)
    receiver.receive(Packet(1, 10, b"KLM"))
    receiver.receive(Packet(1, 20, b"UV"))
    receiver.receive(Packet(1, 8, b"IJKLMNOPQRSTUVWX"))
    assert len(receiver._starts) == 5  # 8-10, 10-13, 13-20, 20-22, 22-24
    receiver.receive(Packet(1, 0, b"ABCDEFGH"))
    assert receiver.read() == b"ABCDEFGHIJKLMNOPQRSTUVWX"
    assert receiver._starts == [] and receiver._pieces == {}


def test_receiver_window_exceeded():
    receiver = StreamReceiver(1, window=8)
    receiver.receive(Packet(1, 0, b"abcd"))
    with pytest.raises(FlowError) as caught:
        receiver.receive(Packet(1, 4, b"efghi"))  # up to 9 > 0 + 8
    assert (caught.value.code, caught.value.problem) == ("window_exceeded", "beyond_window")
    receiver.read(1)
    receiver.receive(Packet(1, 4, b"efghi"))  # reading granted one more byte


def test_receiver_bounds_out_of_order_pieces():
    receiver = StreamReceiver(1, window=100, max_segments=2)
    receiver.receive(Packet(1, 10, b"a"))
    receiver.receive(Packet(1, 20, b"b"))
    receiver.receive(Packet(1, 30, b"c"))
    assert receiver.dropped == 1 and receiver.received_max_offset == 21
    receiver.receive(Packet(1, 0, b"x" * 40))
    assert len(receiver.read()) == 40


@pytest.mark.parametrize(
    ("packets", "problem"),
    [
        ([Packet(1, -1, b"x")], "out_of_range"),
        ([Packet(1, 0, b"abc", fin=True), Packet(1, 2, b"cd")], "beyond_final_size"),
        ([Packet(1, 0, b"abc", fin=True), Packet(1, 0, b"ab", fin=True)], "final_size_changed"),
        ([Packet(1, 4, b"e"), Packet(1, 0, b"ab", fin=True)], "final_size_changed"),
    ],
)
def test_receiver_bad_offsets(packets, problem):
    receiver = StreamReceiver(1, window=100)
    for packet in packets[:-1]:
        receiver.receive(packet)
    with pytest.raises(FlowError) as caught:
        receiver.receive(packets[-1])
    assert (caught.value.code, caught.value.problem) == ("bad_offset", problem)


def test_receiver_fin_and_wrong_stream():
    receiver = StreamReceiver(3, window=100)
    receiver.receive(Packet(3, 0, b"ab"))
    receiver.receive(Packet(3, 2, b"", fin=True))
    receiver.receive(Packet(3, 2, b"", fin=True))  # a resent end is fine
    assert not receiver.finished and receiver.duplicates == 0
    receiver.read()
    assert receiver.finished
    with pytest.raises(ValueError, match="stream 4"):
        receiver.receive(Packet(4, 0, b""))


def test_back_to_back_with_a_window_smaller_than_the_data():
    data = bytes(range(256)) * 40
    sender = StreamSender(9, window=1000, max_packet=300)
    receiver = StreamReceiver(9, window=1000)
    got = bytearray()
    offset = 0
    rounds = 0
    while not (sender.done and receiver.finished):
        rounds += 1
        offset += sender.write(data[offset:])
        if offset == len(data) and not sender.finished:
            sender.finish()
        for packet in drain(sender):
            receiver.receive(packet)
        got += receiver.read()
        if (ack := receiver.take_ack()) is not None:
            sender.on_ack(ack.acknowledge_offset, ack.received_max_offset)
    assert bytes(got) == data
    assert rounds >= len(data) // 1000


# --- any interleaving of send, ack, loss and resend ----------------------------------------


class StreamModel(RuleBasedStateMachine):
    """A lossy, duplicating, reordering network between a sender and a receiver, with
    reconnects and receiver restarts; afterwards a clean run must complete the stream
    with every written byte read exactly once, in order."""

    @initialize(
        window=st.integers(1, 40),
        buffer_extra=st.integers(0, 40),
        max_packet=st.integers(1, 16),
        ack_every=st.integers(1, 10),
    )
    def setup(self, window, buffer_extra, max_packet, ack_every):
        self.window, self.ack_every = window, ack_every
        self.sender = StreamSender(
            5, window=window, buffer_limit=window + buffer_extra, max_packet=max_packet
        )
        self.receiver = StreamReceiver(5, window=window, ack_every=ack_every, max_segments=3)
        self.written = bytearray()
        self.got = bytearray()
        self.to_receiver: list[Packet] = []
        self.to_sender: list[Ack] = []
        self.counter = 0

    @precondition(lambda self: not self.sender.finished)
    @rule(size=st.integers(1, 30))
    def write(self, size):
        data = bytes((self.counter + i) % 251 for i in range(size))
        taken = self.sender.write(data)
        self.counter += taken
        self.written += data[:taken]

    @precondition(lambda self: not self.sender.finished)
    @rule()
    def finish(self):
        self.sender.finish()

    @rule()
    def send(self):
        packet = self.sender.next_packet()
        if packet is not None:
            self.to_receiver.append(packet)

    @precondition(lambda self: self.to_receiver)
    @rule(index=st.integers(0, 100), keep_a_copy=st.booleans())
    def deliver_packet(self, index, keep_a_copy):
        index %= len(self.to_receiver)
        packet = self.to_receiver[index] if keep_a_copy else self.to_receiver.pop(index)
        self.receiver.receive(packet)

    @precondition(lambda self: self.to_receiver)
    @rule(index=st.integers(0, 100))
    def lose_packet(self, index):
        self.to_receiver.pop(index % len(self.to_receiver))

    @rule(size=st.integers(1, 20))
    def read(self, size):
        self.got += self.receiver.read(size)

    @rule()
    def acknowledge(self):
        ack = self.receiver.take_ack()
        if ack is not None:
            self.to_sender.append(ack)

    @precondition(lambda self: self.to_sender)
    @rule(index=st.integers(0, 100), keep_a_copy=st.booleans())
    def deliver_ack(self, index, keep_a_copy):
        index %= len(self.to_sender)
        ack = self.to_sender[index] if keep_a_copy else self.to_sender.pop(index)
        self.sender.on_ack(ack.acknowledge_offset, ack.received_max_offset, ack.window)

    @precondition(lambda self: self.to_sender)
    @rule(index=st.integers(0, 100))
    def lose_ack(self, index):
        self.to_sender.pop(index % len(self.to_sender))

    @rule()
    def timeout(self):
        self.sender.rewind()

    @rule()
    def reconnect(self):
        self.to_receiver.clear()
        self.to_sender.clear()
        self.sender.resume(self.receiver.acknowledgement().acknowledge_offset)

    @rule()
    def restart_receiver(self):
        """The receiving process dies; the new one starts where its reader got to."""
        self.to_receiver.clear()
        self.to_sender.clear()
        self.receiver = StreamReceiver(
            5, window=self.window, ack_every=self.ack_every, start_offset=len(self.got)
        )
        self.sender.resume(len(self.got))

    @invariant()
    def delivered_in_order(self):
        assert self.got == self.written[: len(self.got)]
        assert self.sender.acknowledged <= self.receiver.acknowledge_offset == len(self.got)
        assert self.receiver.received_max_offset <= self.sender.sent <= len(self.written)

    def teardown(self):
        if not hasattr(self, "sender"):
            return
        self.to_receiver.clear()
        self.to_sender.clear()
        self.sender.resume(self.receiver.acknowledge_offset)
        if not self.sender.finished:
            self.sender.finish()
        for _ in range(10_000):
            if self.sender.done and self.receiver.finished:
                break
            for packet in drain(self.sender):
                self.receiver.receive(packet)
            self.got += self.receiver.read()
            ack = self.receiver.take_ack()
            if ack is not None:
                self.sender.on_ack(ack.acknowledge_offset, ack.received_max_offset, ack.window)
        assert self.sender.done and self.receiver.finished
        assert self.got == self.written


TestStreamModel = StreamModel.TestCase
TestStreamModel.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


# --- slow-consumer queues -----------------------------------------------------------------


def take_all(queue):
    out = []
    while (entry := queue.take()) is not None:
        out.append(entry)
    return out


def test_block_policy_reports_full():
    queue: SubscriberQueue[str] = SubscriberQueue(SlowConsumer.BLOCK, max_messages=2)
    assert queue.offer("t", "1") is Offer.ACCEPTED
    assert queue.offer("t", "2") is Offer.ACCEPTED
    assert queue.full
    assert queue.offer("t", "3") is Offer.FULL
    assert len(queue) == 2 and queue.dropped == 0 and queue.pending_gap == 0
    assert queue.take().value == "1"
    assert queue.offer("t", "3") is Offer.ACCEPTED
    assert [e.value for e in take_all(queue)] == ["2", "3"]
    assert queue.take() is None


def test_drop_policy_counts_a_gap_on_the_next_message():
    queue: SubscriberQueue[int] = SubscriberQueue(SlowConsumer.DROP, max_messages=2)
    for n in range(5):
        queue.offer("t", n)
    assert queue.dropped == 3 and queue.pending_gap == 3
    assert [(e.value, e.gap) for e in take_all(queue)] == [(0, 0), (1, 0)]
    assert queue.offer("t", 5) is Offer.ACCEPTED
    assert queue.pending_gap == 0
    assert take_all(queue) == [Queued("t", 5, 0, gap=3)]
    queue.offer("t", 6)
    queue.offer("t", 7)
    queue.offer("t", 8)  # dropped, and no message follows
    take_all(queue)
    assert queue.take_gap() == 1 and queue.pending_gap == 0  # for a standalone marker


def test_latest_policy_keeps_the_newest_per_topic():
    queue: SubscriberQueue[int] = SubscriberQueue(SlowConsumer.LATEST, max_messages=2)
    assert queue.offer("a", 1) is Offer.ACCEPTED
    assert queue.offer("b", 1) is Offer.ACCEPTED
    assert queue.offer("a", 2) is Offer.REPLACED
    assert queue.offer("a", 3) is Offer.REPLACED
    assert queue.offer("c", 1) is Offer.DROPPED  # a third topic does not fit
    assert take_all(queue) == [Queued("a", 3, superseded=2), Queued("b", 1)]
    assert queue.offer("c", 2) is Offer.ACCEPTED
    assert take_all(queue) == [Queued("c", 2, gap=1)]
    assert queue.superseded == 2 and queue.dropped == 1


def test_byte_bounds():
    queue: SubscriberQueue[str] = SubscriberQueue(SlowConsumer.BLOCK, max_messages=10, max_bytes=10)
    assert queue.offer("t", "big", size=50) is Offer.ACCEPTED  # one always fits
    assert queue.offer("t", "x", size=1) is Offer.FULL
    queue.take()
    assert queue.offer("t", "a", size=6) is Offer.ACCEPTED
    assert queue.offer("t", "b", size=5) is Offer.FULL
    assert queue.offer("t", "c", size=4) is Offer.ACCEPTED
    assert queue.bytes == 10


def test_latest_replacement_that_does_not_fit_leaves_nothing_stale():
    queue: SubscriberQueue[str] = SubscriberQueue(
        SlowConsumer.LATEST, max_messages=10, max_bytes=10
    )
    queue.offer("a", "a1", size=5)
    queue.offer("b", "b1", size=5)
    assert queue.offer("a", "a2", size=6) is Offer.DROPPED
    assert [e.value for e in take_all(queue)] == ["b1"]
    assert queue.pending_gap == 1 and queue.superseded == 1


queue_operations = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.sampled_from("abc"), st.integers(0, 8)),
        st.tuples(st.just("take"), st.just(""), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300)
@given(st.sampled_from(list(SlowConsumer)), queue_operations)
def test_queue_accounts_for_every_message(policy, operations):
    queue: SubscriberQueue[int] = SubscriberQueue(policy, max_messages=3, max_bytes=12)
    offered = refused = delivered = gaps = superseded = 0
    for op, topic, size in operations:
        if op == "offer":
            offered += 1
            refused += queue.offer(topic, offered, size) is Offer.FULL
        elif (entry := queue.take()) is not None:
            delivered += 1
            gaps += entry.gap
            superseded += entry.superseded
        assert len(queue) <= 3
        assert queue.bytes <= 12 or len(queue) == 1
    rest = take_all(queue)
    delivered += len(rest)
    gaps += sum(e.gap for e in rest) + queue.pending_gap
    superseded += sum(e.superseded for e in rest)
    # Every message offered was delivered, refused (the publisher knows), dropped (a gap
    # the consumer sees) or superseded by a newer value of its topic.
    assert offered == delivered + refused + gaps + queue.superseded
    assert superseded <= queue.superseded
    if policy is SlowConsumer.BLOCK:
        assert gaps == 0 and queue.superseded == 0
    if policy is SlowConsumer.DROP:
        assert refused == 0 and queue.superseded == 0
