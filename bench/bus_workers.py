"""The bus benchmark's clients of the appliance's bus, one role per process.

    python -m bench.bus_workers sub   TARGET --result FILE [--connections K] [--expect N]
    python -m bench.bus_workers pub   TARGET --result FILE --count N --size B [--batch K]
                                      [--rate R]
    python -m bench.bus_workers serve TARGET --result FILE
    python -m bench.bus_workers call  TARGET --result FILE --count N --callers C

TARGET is what `appliance.bus.client.open_client` takes (`unix:///path`, `tcp://h:p`);
the token comes from $BENCH_BUS_TOKEN. The clients are the ordinary `appliance.bus.client`
(`BusClient.publish`, `subscribe(policy="block")`, `request`, `serve`), what a local
program would use; the one exception is `pub --batch K`, which writes K publishes per
socket write through the protocol's `Connection` (`bench/bus_batch_publisher.py`).

- `sub`: K connections, each with one `block` subscription to `bench.data` (the endpoint
  holds the publisher back instead of dropping), made sure of by a request to a topic
  nobody serves (its `no_responders` reply comes after the subscribe was handled: one
  connection's frames are handled in order). Then `ready`; each connection counts until
  it has N messages (or gap-counted drops), or nothing came for --idle s
  (--first-wait s before the first message).
- `pub`: N stamped payloads to `bench.data`, one `await publish(...)` after the other
  (each returns once its frame is written to the socket: no waiting for the subscriber),
  or K at a time with --batch K; --rate R paces them at R msgs/s (always one at a time).
- `serve`: answers `svc.echo` with the request's data until stopped or --deadline.
- `call`: C concurrent trio tasks on one connection share N calls of `svc.echo`, after a
  warm-up of WARMUP_CALLS; round trips/s and per-call latencies.
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import AsyncExitStack

import trio

from appliance.bus.client import (
    BusClient,
    IncomingRequest,
    NoResponders,
    Subscription,
    open_client,
)
from bench.bus_batch_publisher import open_batch_publisher
from bench.bus_payload import Tally, padding_for, payload, ready, write_result

TOPIC = "bench.data"
BARRIER = "bench.barrier"
SERVICE = "echo"
WARMUP_CALLS = 200
CALL_TIMEOUT_S = 10.0


async def _barrier(bus: BusClient, within: float = 10.0) -> None:
    """Return once the endpoint has handled everything this connection sent before."""
    try:
        await bus.request(BARRIER, b"", timeout=within)
    except NoResponders:
        return
    raise RuntimeError(f"somebody serves {BARRIER}")


async def _watch_idle(tallies: list[Tally], args: argparse.Namespace, scope: trio.CancelScope):
    """Cancel `scope` (the counting) once nothing came for --idle s (--first-wait s before
    the first message): what did not come by then is counted as lost."""
    seen, quiet_since = 0, trio.current_time()
    while True:
        await trio.sleep(0.1)
        count = sum(t.count for t in tallies)
        if count != seen:
            seen, quiet_since = count, trio.current_time()
        elif trio.current_time() - quiet_since >= (args.idle if count else args.first_wait):
            scope.cancel()
            return


async def _consume(sub: Subscription, tally: Tally, expect: int) -> None:
    async for message in sub:
        tally.add(message.data, message.gap)
        if tally.count + tally.gaps >= expect:
            return


async def subscriber(args: argparse.Namespace, token: str) -> None:
    tallies = [Tally() for _ in range(args.connections)]
    async with AsyncExitStack() as stack:
        subs = []
        for i in range(args.connections):
            bus = await stack.enter_async_context(
                open_client(args.target, token, name=f"bench-sub-{os.getpid()}-{i}")
            )
            subs.append(await bus.subscribe(TOPIC, policy="block"))
            await _barrier(bus)
        ready()
        cpu = time.process_time()
        with trio.move_on_after(args.deadline):
            async with trio.open_nursery() as counting:
                counting.start_soon(_watch_idle, tallies, args, counting.cancel_scope)
                async with trio.open_nursery() as consumers:
                    for sub, tally in zip(subs, tallies, strict=True):
                        consumers.start_soon(_consume, sub, tally, args.expect)
                counting.cancel_scope.cancel()  # every subscription has its messages
        cpu = time.process_time() - cpu
    write_result(args.result, {"connections": [t.as_dict() for t in tallies], "cpu_s": cpu})


async def publisher(args: argparse.Namespace, token: str) -> None:
    if args.batch > 1 and not args.rate:
        await batch_publisher(args, token)
        return
    padding = padding_for(args.size)
    async with open_client(args.target, token, name=f"bench-pub-{os.getpid()}") as bus:
        with trio.fail_after(args.deadline):
            cpu = time.process_time()
            started, began = time.monotonic_ns(), trio.current_time()
            for seq in range(args.count):
                if args.rate:
                    await trio.sleep_until(began + seq / args.rate)
                await bus.publish(TOPIC, payload(seq, padding))
            finished = time.monotonic_ns()
            cpu = time.process_time() - cpu
            await _barrier(bus, args.deadline)  # the endpoint took everything sent
    write_result(
        args.result,
        {"sent": args.count, "started_ns": started, "finished_ns": finished, "cpu_s": cpu},
    )


async def batch_publisher(args: argparse.Namespace, token: str) -> None:
    padding = padding_for(args.size)
    name = f"bench-pub-{os.getpid()}"
    async with open_batch_publisher(args.target, token, name) as bus:
        with trio.fail_after(args.deadline):
            cpu = time.process_time()
            started = time.monotonic_ns()
            for first in range(0, args.count, args.batch):
                last = min(args.count, first + args.batch)
                await bus.publish_batch(TOPIC, [payload(s, padding) for s in range(first, last)])
            finished = time.monotonic_ns()
            cpu = time.process_time() - cpu
            await bus.barrier(args.deadline)
    write_result(
        args.result,
        {"sent": args.count, "started_ns": started, "finished_ns": finished, "cpu_s": cpu},
    )


async def responder(args: argparse.Namespace, token: str) -> None:
    served = 0

    async def echo(request: IncomingRequest) -> bytes:
        nonlocal served
        served += 1
        return request.data

    async with open_client(args.target, token, name=f"bench-serve-{os.getpid()}") as bus:
        await bus.serve(SERVICE, echo)
        await bus.request(f"svc.{SERVICE}", b"x", timeout=10.0)  # served: it is registered
        ready()
        await trio.sleep(args.deadline)
    write_result(args.result, {"served": served})


async def caller(args: argparse.Namespace, token: str) -> None:
    padding = padding_for(args.size)
    latencies: list[int] = []
    errors: dict[str, int] = {}

    async with open_client(args.target, token, name=f"bench-call-{os.getpid()}") as bus:

        async def calls(count: int, record: bool) -> None:
            left = count

            async def one_caller() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    data = payload(0, padding)
                    try:
                        await bus.request(f"svc.{SERVICE}", data, timeout=CALL_TIMEOUT_S)
                    except Exception as exc:  # counted and reported, never hidden
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                        continue
                    if record:
                        latencies.append(time.monotonic_ns() - int.from_bytes(data[:8], "little"))

            async with trio.open_nursery() as nursery:
                for _ in range(args.callers):
                    nursery.start_soon(one_caller)

        with trio.fail_after(args.deadline):
            await calls(WARMUP_CALLS, record=False)
            cpu = time.process_time()
            started = time.monotonic_ns()
            await calls(args.count, record=True)
            finished = time.monotonic_ns()
            cpu = time.process_time() - cpu
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


ROLES = {"sub": subscriber, "pub": publisher, "serve": responder, "call": caller}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bus_workers")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("target")
    parser.add_argument("--result", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--expect", type=int, default=0, help="messages per subscriber")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--callers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="publishes per write (pub)")
    parser.add_argument("--rate", type=float, default=0, help="msgs/s (pub; 0: at once)")
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--first-wait", type=float, default=20.0)
    parser.add_argument("--deadline", type=float, default=60.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    token = os.environ["BENCH_BUS_TOKEN"]
    trio.run(ROLES[args.role], args, token)


if __name__ == "__main__":
    main()
