"""The bus benchmark's reference clients: paho-mqtt (mosquitto) and nats-py (nats-server).

    python -m bench.bus_reference mqtt-sub  HOST:PORT --result FILE [--connections K] [--expect N]
    python -m bench.bus_reference mqtt-pub  HOST:PORT --result FILE --count N --size B [--rate R]
    python -m bench.bus_reference nats-serve nats://HOST:PORT --result FILE
    python -m bench.bus_reference nats-call  nats://HOST:PORT --result FILE --count N --callers C

The same roles, arguments, payloads and result files as `bench.bus_workers`, so that the
reference and the appliance pay the same per-process and per-message costs around the
thing measured:

- `mqtt-sub`: K paho clients (one network thread each, `loop_start`), each subscribed to
  `bench/data` at QoS 0; `ready` once every SUBACK is in. Counts until N messages each, or
  nothing came for --idle s (mosquitto may drop QoS 0 silently: the count shows it).
- `mqtt-pub`: one paho client without a network thread: `publish(..., qos=0)` writes the
  packet at once; when the socket is full it waits (select) until paho's queue is
  written, as the appliance's `await publish` waits for its write. So neither side
  stamps messages that sit in an unbounded client-side queue. --rate R paces it.
- `nats-serve`: one nats-py subscription to `svc.echo` answering `msg.respond(data)`.
- `nats-call`: C concurrent asyncio tasks on one connection share N `nc.request` calls,
  after the same warm-up as the appliance's caller.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import threading
import time
from typing import Any

from bench.bus_payload import Tally, fail, padding_for, payload, ready, write_result

MQTT_TOPIC = "bench/data"
NATS_SUBJECT = "svc.echo"
WARMUP_CALLS = 200  # as bench.bus_workers
CALL_TIMEOUT_S = 10.0


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.removeprefix("nats://").rpartition(":")
    return host, int(port)


# --- MQTT ------------------------------------------------------------------------------


def _mqtt_client(name: str) -> Any:
    import paho.mqtt.client as mqtt

    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)


def mqtt_subscriber(args: argparse.Namespace) -> None:
    host, port = _host_port(args.target)
    tallies = [Tally() for _ in range(args.connections)]
    subscribed = [threading.Event() for _ in range(args.connections)]
    clients = []
    for i, (tally, done) in enumerate(zip(tallies, subscribed, strict=True)):
        client = _mqtt_client(f"bench-sub-{os.getpid()}-{i}")

        def on_connect(c, userdata, flags, reason, properties) -> None:
            c.subscribe(MQTT_TOPIC, qos=0)

        def on_subscribe(c, userdata, mid, reasons, properties, done=done) -> None:
            done.set()

        def on_message(c, userdata, message, tally=tally) -> None:
            tally.add(message.payload)

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.connect(host, port)
        client.loop_start()
        clients.append(client)
    try:
        for done in subscribed:
            if not done.wait(10.0):
                fail("no SUBACK within 10 s")
        ready()
        cpu = time.process_time()
        _wait_for(tallies, args)
        cpu = time.process_time() - cpu
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
    write_result(args.result, {"connections": [t.as_dict() for t in tallies], "cpu_s": cpu})


def _wait_for(tallies: list[Tally], args: argparse.Namespace) -> None:
    """Until every tally has `expect` messages, or none came for --idle s (--first-wait s
    before the first), or the deadline."""
    deadline = time.monotonic() + args.deadline
    seen, quiet_since = 0, time.monotonic()
    while time.monotonic() < deadline:
        counts = [t.count for t in tallies]
        if all(c >= args.expect for c in counts):
            return
        if sum(counts) != seen:
            seen, quiet_since = sum(counts), time.monotonic()
        elif time.monotonic() - quiet_since >= (args.idle if seen else args.first_wait):
            return
        time.sleep(0.05)


def mqtt_publisher(args: argparse.Namespace) -> None:
    host, port = _host_port(args.target)
    padding = padding_for(args.size)
    client = _mqtt_client(f"bench-pub-{os.getpid()}")
    client.connect(host, port)
    deadline = time.monotonic() + 10.0
    while not client.is_connected():
        if time.monotonic() > deadline:
            fail("no CONNACK within 10 s")
        client.loop(0.1)
    sock = client.socket()
    deadline = time.monotonic() + args.deadline
    cpu = time.process_time()
    started, began = time.monotonic_ns(), time.monotonic()
    for seq in range(args.count):
        if args.rate:
            time.sleep(max(0.0, began + seq / args.rate - time.monotonic()))
        client.publish(MQTT_TOPIC, payload(seq, padding), qos=0)
        while client.want_write():  # the socket is full: wait, as `await publish` does
            if time.monotonic() > deadline:
                fail("publishing ran past the deadline")
            select.select([], [sock], [], 1.0)
            client.loop_write()
    finished = time.monotonic_ns()
    cpu = time.process_time() - cpu
    client.disconnect()
    write_result(
        args.result,
        {"sent": args.count, "started_ns": started, "finished_ns": finished, "cpu_s": cpu},
    )


# --- NATS ------------------------------------------------------------------------------


async def nats_responder(args: argparse.Namespace) -> None:
    import nats

    nc = await nats.connect(args.target, connect_timeout=10)
    served = 0

    async def echo(msg: Any) -> None:
        nonlocal served
        served += 1
        await msg.respond(msg.data)

    await nc.subscribe(NATS_SUBJECT, cb=echo)
    await nc.flush(timeout=10)
    ready()
    try:
        await asyncio.sleep(args.deadline)
    finally:
        await nc.close()
    write_result(args.result, {"served": served})


async def nats_caller(args: argparse.Namespace) -> None:
    import nats

    padding = padding_for(args.size)
    latencies: list[int] = []
    errors: dict[str, int] = {}
    nc = await nats.connect(args.target, connect_timeout=10)

    async def calls(count: int, record: bool) -> None:
        left = count

        async def one_caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                data = payload(0, padding)
                try:
                    await nc.request(NATS_SUBJECT, data, timeout=CALL_TIMEOUT_S)
                except Exception as exc:  # counted and reported, never hidden
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                if record:
                    latencies.append(time.monotonic_ns() - int.from_bytes(data[:8], "little"))

        await asyncio.gather(*(one_caller() for _ in range(args.callers)))

    try:
        async with asyncio.timeout(args.deadline):
            await calls(WARMUP_CALLS, record=False)
            cpu = time.process_time()
            started = time.monotonic_ns()
            await calls(args.count, record=True)
            finished = time.monotonic_ns()
            cpu = time.process_time() - cpu
    finally:
        await nc.close()
    write_result(
        args.result,
        {
            "calls": args.count,
            "ok": len(latencies),
            "errors": errors,
            "started_ns": started,
            "finished_ns": finished,
            "cpu_s": cpu,
            "latencies_us": [ns // 1000 for ns in latencies],
        },
    )


ROLES = {
    "mqtt-sub": mqtt_subscriber,
    "mqtt-pub": mqtt_publisher,
    "nats-serve": lambda args: asyncio.run(nats_responder(args)),
    "nats-call": lambda args: asyncio.run(nats_caller(args)),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bus_reference")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("target")
    parser.add_argument("--result", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--expect", type=int, default=0, help="messages per subscriber")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--callers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="ignored: paho writes each")
    parser.add_argument("--rate", type=float, default=0, help="msgs/s (mqtt-pub; 0: at once)")
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--first-wait", type=float, default=20.0)
    parser.add_argument("--deadline", type=float, default=60.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    ROLES[args.role](args)


if __name__ == "__main__":
    main()
