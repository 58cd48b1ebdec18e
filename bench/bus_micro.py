"""Micro-benchmarks of the bus's sans-IO hot paths, in CPU time (best of several runs).

.venv/bin/python -m bench.bus_micro
"""

from __future__ import annotations

import time
from collections.abc import Callable

from appliance.bus import messages as m
from appliance.bus.codec import decode_body
from appliance.bus.connection import Connection
from appliance.bus.peer import _send_one

N = 20_000


def _pair() -> tuple[Connection, Connection]:
    from tests.bus.test_connection import Pair

    pair = Pair().connect()
    return pair.server, pair.client


def _best(fn: Callable[[], None], runs: int = 9) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        for _ in range(N):
            fn()
        best = min(best, time.process_time() - start)
    return best / N * 1e6


def main() -> None:
    server, client = _pair()
    head = m.Head.trusted(source="sensor-1")
    deliver = m.Deliver.trusted(sid=3, topic="a.b.c", data=b"x" * 64, headers={})
    message = m.Message(deliver, head)
    print(f"encode deliver (_send_one)  {_best(lambda: _send_one(server, message)):7.2f} µs")
    if hasattr(server, "send_deliver"):
        us = _best(lambda: server.send_deliver(deliver, head))
        print(f"encode deliver (writer)     {us:7.2f} µs")
    frame = _send_one(server, message)
    print(f"client receive deliver      {_best(lambda: client.receive_data(frame)):7.2f} µs")
    publish = client.send(m.Publish(topic="a.b.c", data=b"x" * 64))
    print(f"server receive publish      {_best(lambda: server.receive_data(publish)):7.2f} µs")
    pub_body = publish[2:-4]
    print(f"decode_body publish         {_best(lambda: decode_body(pub_body)):7.2f} µs")
    wire = decode_body(pub_body)
    print(f"messages.parse publish      {_best(lambda: m.parse(wire)):7.2f} µs")
    pub = m.Publish(topic="a.b.c", data=b"x" * 64)
    print(f"client encode publish       {_best(lambda: client.send(pub)):7.2f} µs")


if __name__ == "__main__":
    main()
