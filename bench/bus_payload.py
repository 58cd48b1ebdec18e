"""What every bus benchmark worker shares: the timed payload, the tally, the result file.

A payload is `size` bytes: the send time (`time.monotonic_ns()`, CLOCK_MONOTONIC, the
same clock in every process on the machine) as 8 little-endian bytes, the sequence
number as 4, then zeros. A receiver takes its own `monotonic_ns()` on arrival; the
difference is the message's publish-sent -> delivered latency, measured the same way for
the appliance's bus, mosquitto and NATS.

Workers report on stdout one line, `ready`, when they are set up (connected, subscribed,
and sure the server knows it), and write their result as one JSON document to the file
named by `--result`. No trio or asyncio here: the reference workers import this too.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

STAMP_BYTES = 12  # 8 bytes of time, 4 of sequence


def payload(seq: int, padding: bytes) -> bytes:
    """A payload stamped now: `padding` is `bytes(size - STAMP_BYTES)`, made once."""
    return time.monotonic_ns().to_bytes(8, "little") + seq.to_bytes(4, "little") + padding


def padding_for(size: int) -> bytes:
    if size < STAMP_BYTES:
        raise ValueError(f"a payload is at least {STAMP_BYTES} bytes")
    return bytes(size - STAMP_BYTES)


class Tally:
    """Arrivals of stamped payloads at one subscriber: latencies (ns) and the last arrival.
    `add` is the only per-message cost a subscriber adds to its client's own."""

    __slots__ = ("first_ns", "gaps", "last_ns", "latencies")

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.gaps = 0
        self.first_ns = 0
        self.last_ns = 0

    def add(self, data: bytes, gap: int = 0) -> None:
        now = time.monotonic_ns()
        if not self.latencies:
            self.first_ns = now
        self.latencies.append(now - int.from_bytes(data[:8], "little"))
        self.last_ns = now
        self.gaps += gap

    @property
    def count(self) -> int:
        return len(self.latencies)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.count,
            "gaps": self.gaps,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "latencies_us": [ns // 1000 for ns in self.latencies],
        }


def ready() -> None:
    print("ready", flush=True)


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result))


def fail(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(1)
