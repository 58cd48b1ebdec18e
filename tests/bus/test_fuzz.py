"""Fuzzing the decoder and the message parser with random and mutated byte streams.

Whatever arrives, only our typed errors come out (returned by the decoder, raised by
`parse`), nothing else escapes, and the decoder never holds more than one frame's bytes.
Example counts are explicit: 6000 + 2000 + 4000 here and 1000 round trips in
test_messages.py, over 10^4 in all.
"""

from __future__ import annotations

import itertools
import random
import zlib
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.bus import messages as m
from appliance.bus.codec import MAX_HEADER_BYTES, Frame, FrameDecoder, encode_frame, encode_varint
from appliance.bus.messages import parse
from appliance.bus.reasons import FrameError, MessageError
from tests.bus.spec_doc import GOLDEN

MAX_FRAME = 2048
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Valid messages of every kind to mutate: drawing fresh random messages costs most of the
# time, and test_messages.py already round-trips those; here the mutations give variety.
POOL = [message for _, _, message in GOLDEN] + [
    m.Message(m.Unsubscribe(sid=1)),
    m.Message(m.Register(node=m.NodeRecord(name="n1", labels={"a": "b"}))),
    m.Message(m.Deregister(name="n1")),
    m.Message(m.Hello(versions=(1, 2), will=m.Will(topic="a.b", data=b"bye", retain=True))),
    m.Message(m.Deliver(sid=2, topic="a", retained=True, headers={"k": "v"})),
    m.Message(m.Reply(id=1, status="error", error="boom", data=b"\x00")),
]
assert {message.kind for message in POOL} == set(m.KINDS)
FRAMES = [encode_frame(message.to_wire()) for message in POOL]
WIRES = [cbor2.dumps(message.to_wire()) for message in POOL]


def run(chunks: list[bytes], max_bad_crc: int = 3) -> list[Any]:
    """Feed the chunks; parse every frame. Returns what came out, in order."""
    decoder = FrameDecoder(MAX_FRAME, max_bad_crc=max_bad_crc)
    out: list[Any] = []
    for chunk in chunks:
        if decoder.failed is not None:
            break
        for event in decoder.feed(chunk):
            assert decoder.buffered <= MAX_FRAME + MAX_HEADER_BYTES + 4
            if isinstance(event, Frame):
                assert event.size <= MAX_FRAME + MAX_HEADER_BYTES + 4
                try:
                    out.append(parse(event.body))
                except MessageError as exc:
                    assert exc.code == "bad_message" and exc.problem
                    out.append(exc)
            else:
                assert isinstance(event, FrameError)
                out.append(event)
        assert decoder.buffered <= decoder.max_buffered
    if decoder.failed is None:
        error = decoder.eof()
        assert error is None or isinstance(error, FrameError)
    return out


def chunked(rnd: random.Random, stream: bytes) -> list[bytes]:
    cuts = sorted(rnd.randint(0, len(stream)) for _ in range(rnd.randint(0, 8)))
    return [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]


def mutated(rnd: random.Random) -> bytes:
    stream = bytearray(b"".join(rnd.choices(FRAMES, k=rnd.randint(1, 4))))
    for _ in range(rnd.randint(0, 4)):
        op = rnd.choice(["flip", "truncate", "insert_frame", "insert_bytes", "delete"])
        at = rnd.randint(0, len(stream))
        if op == "flip" and stream:
            stream[min(at, len(stream) - 1)] ^= 1 << rnd.randint(0, 7)
        elif op == "truncate":
            del stream[at:]
        elif op == "insert_frame":
            stream[at:at] = rnd.choice(FRAMES)
        elif op == "insert_bytes":
            stream[at:at] = rnd.randbytes(rnd.randint(1, 8))
        elif op == "delete":
            del stream[at : at + rnd.randint(1, 8)]
    return bytes(stream)


# One seeded Random per example: hypothesis draws one value, so an example costs little
# and 10^4 of them fit in seconds; a failure still reproduces from its seed.
seeds = st.randoms(use_true_random=True)


@settings(FUZZ, max_examples=6000)
@given(seeds)
def test_mutated_frame_streams(rnd: random.Random) -> None:
    run(chunked(rnd, mutated(rnd)))


@settings(FUZZ, max_examples=2000)
@given(st.binary(max_size=64), seeds)
def test_random_bytes(data: bytes, rnd: random.Random) -> None:
    run(chunked(rnd, b"\x01" + data), max_bad_crc=1)
    run([data])


def random_value(rnd: random.Random, depth: int = 0) -> Any:
    """A random value of the CBOR data model (some outside what messages allow)."""
    pick = rnd.randrange(10 if depth < 3 else 8)
    if pick == 0:
        return None
    if pick == 1:
        return rnd.random() < 0.5
    if pick == 2:
        return rnd.choice(
            [0, 1, -1, 23, 24, 255, 256, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**64)]
        )
    if pick == 3:
        return rnd.randint(-(2**64), 2**64 - 1)
    if pick == 4:
        return rnd.choice([0.0, -0.0, 1.5, float("inf"), float("nan"), 1e300])
    if pick == 5:
        return "".join(rnd.choices("ab.*>-_:/ é\x00", k=rnd.randint(0, 8)))
    if pick in (6, 7):
        return rnd.randbytes(rnd.randint(0, 8))
    if pick == 8:
        return [random_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))]
    keys = ["topic", "sid", "name", "data", "x", ""]
    return {rnd.choice(keys): random_value(rnd, depth + 1) for _ in range(rnd.randint(0, 3))}


def tampered(rnd: random.Random) -> dict[str, Any]:
    """A valid message with one field (head, body or nested) replaced or added."""
    wire = cbor2.loads(rnd.choice(WIRES))
    target = wire
    while True:
        maps = [k for k, v in target.items() if isinstance(v, dict)]
        if not maps or rnd.random() < 0.5:
            break
        target = target[rnd.choice(maps)]
    keys = [*target, "extra"]
    target[rnd.choice(keys)] = random_value(rnd)
    return wire


def good_crc(body: bytes) -> bytes:
    head = b"\x01" + encode_varint(len(body))
    return head + body + zlib.crc32(head + body).to_bytes(4, "big")


@settings(FUZZ, max_examples=4000)
@given(seeds)
def test_random_bodies_in_good_frames(rnd: random.Random) -> None:
    bodies = []
    for _ in range(rnd.randint(1, 3)):
        pick = rnd.randrange(3)
        if pick == 0:
            bodies.append(rnd.randbytes(rnd.randint(0, 40)))
        elif pick == 1:
            bodies.append(cbor2.dumps(random_value(rnd)))
        else:
            bodies.append(cbor2.dumps(tampered(rnd)))
    out = run([b"".join(good_crc(body) for body in bodies)])
    if all(len(body) <= MAX_FRAME for body in bodies):
        assert len(out) == len(bodies)  # frames stay in step whatever their bodies hold
