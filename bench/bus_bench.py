"""`bus`: the appliance's bus against mosquitto (pub/sub) and nats-server (request/reply).

One appliance (`python -m appliance run`, `--bus-tcp 127.0.0.1:0`, the admin token from
its data dir, the bus addresses from `run/endpoints.json`), one mosquitto and one
nats-server (from Debian, installed by `bus_processes` when missing, run here on
127.0.0.1 with free ports, never as services) run side by side, idle when not measured.
Every client is its own process (`bus_workers.py` for ours, `bus_reference.py` with
paho-mqtt and nats-py; `bus_runs.py` starts them), so ours and the references pay the
same IPC. Payloads carry their send time (`bus_payload.py`); latency is publish-sent ->
delivered on CLOCK_MONOTONIC, the same clock in every process.

1. Publish -> subscriber: one publisher process, one subscriber process, COUNT messages
   of 64 B and of 4 KiB as fast as the publisher can (pipelined: nobody waits per
   message, as paho at QoS 0 does not). Ours over the Unix socket and over TCP, the
   subscriber an ordinary `BusClient.subscribe(policy="block")` (the endpoint holds the
   publisher back rather than drop; any `gap` is counted and a lost message misses the
   figure), the publisher `bus_batch_publisher`: the real protocol through the sans-IO
   `Connection`, BATCH publishes per socket write, so that the figure is the endpoint's
   and the subscriber's and not the publishing client's. One more run per round with the
   ordinary `await BusClient.publish(...)` per message (64 B, Unix socket) shows that
   client's own cost. The reference: paho-mqtt at QoS 0 through mosquitto over TCP, one
   `publish` per message written at once (`max_queued_messages 0`: nothing dropped;
   losses would be counted). msgs/s = delivered / (last delivery - first publish). p99
   of every message in those runs: at full speed that is mostly time queued behind the
   earlier messages, so a paced run (PACED_COUNT messages at PACED_RATE msgs/s, well
   below either side's limit, ordinary clients on both sides) gives the latency of one
   message through an unloaded bus. Target >= 2x mosquitto's msgs/s at the same size
   (PRODUCT.md §4 names 64 B on the Unix socket; the others are held to the same bar).
2. Request/reply: one responder process (`BusClient.serve("echo", ...)`: `svc.echo`) and
   one caller process, 1 and 32 concurrent callers (trio tasks on one connection)
   sharing CALLS calls after a warm-up; the reference is the same through nats-server
   (one nats-py subscription answering `msg.respond`, asyncio tasks calling
   `nc.request`). Ours over the Unix socket (the local programs' way; NATS over TCP
   loopback). Round trips/s = calls / elapsed; target >= 1x.
3. Fan-out: one publisher (batched, as in 1), FANOUT_PROCESSES subscriber processes x
   FANOUT_PER_PROCESS connections = 100 subscribers, each its own connection with one
   `block` subscription (processes of 25 rather than 100 interpreters: the machine has 2
   cores), FANOUT_COUNT messages of 64 B; deliveries/s in total and p99. The same
   topology through mosquitto is measured beside it (no target). All the messages fit
   in the queues at once, so this p99 is close to the run's length: read the rate.

Order (PHASES): one round of everything, then a second round of 1 and 2 while the time
allows; a phase that could not finish before the 300 s limit is skipped (logged) and its
figures left out. The best rate and the best p99 of each count; every run is in the
details with the CPU seconds of each process (server, publisher, subscribers, responder,
caller): on 2 shared cores they show which process was the bottleneck.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from typing import Any

from bench.bus_processes import Mosquitto, NatsServer, ensure_reference_servers, server_version
from bench.bus_runs import Setup, pubsub, request_reply, size_label
from bench.common import Figure, log, scratch_dir
from bench.http_bench import Server

COUNT = 20_000
SIZES = (64, 4096)
BATCH = 64
PACED_COUNT = 2_000
PACED_RATE = 1_000.0
CALLS = 3_000
CONCURRENCY = (1, 32)
FANOUT_PROCESSES = 4
FANOUT_PER_PROCESS = 25
FANOUT_COUNT = 500
SECOND_ROUND_BEFORE_S = 130.0  # see PHASES
TARGET_PUBSUB = 2.0
TARGET_REQREP = 1.0
MQTT_NAME = "paho-mqtt via mosquitto, QoS 0, TCP"
NATS_NAME = "nats-py via nats-server, TCP"
TRANSPORT = {"unix": "Unix socket", "tcp": "TCP"}

Runs = dict[tuple[Any, ...], list[dict[str, Any]]]


# --- what is run -----------------------------------------------------------------------


def pubsub_round(setup: Setup, runs: Runs) -> None:
    for size in SIZES:
        if setup.mosquitto:  # the reference first, as in the other benchmarks
            runs.setdefault(("rate", "mqtt", size), []).append(pubsub(setup, "mqtt", size, COUNT))
        for side in TRANSPORT:
            summary = pubsub(setup, side, size, COUNT, batch=BATCH)
            runs.setdefault(("rate", side, size), []).append(summary)
        if size == SIZES[0]:
            summary = pubsub(setup, "unix", size, COUNT)
            runs.setdefault(("rate", "unix-client", size), []).append(summary)


def paced_round(setup: Setup, runs: Runs) -> None:
    for side in ["mqtt", *TRANSPORT] if setup.mosquitto else list(TRANSPORT):
        summary = pubsub(setup, side, SIZES[0], PACED_COUNT, rate=PACED_RATE)
        runs.setdefault(("paced", side), []).append(summary)


def request_reply_round(setup: Setup, runs: Runs) -> None:
    for callers in CONCURRENCY:
        if setup.nats:
            summary = request_reply(setup, "nats", callers, CALLS)
            runs.setdefault(("call", "nats", callers), []).append(summary)
        summary = request_reply(setup, "unix", callers, CALLS)
        runs.setdefault(("call", "unix", callers), []).append(summary)


def fanout_round(setup: Setup, runs: Runs) -> None:
    shape = {"processes": FANOUT_PROCESSES, "per_process": FANOUT_PER_PROCESS}
    if setup.mosquitto:
        summary = pubsub(setup, "mqtt", SIZES[0], FANOUT_COUNT, **shape)
        runs.setdefault(("fanout", "mqtt"), []).append(summary)
    summary = pubsub(setup, "unix", SIZES[0], FANOUT_COUNT, batch=BATCH, **shape)
    runs.setdefault(("fanout", "unix"), []).append(summary)


# --- figures ---------------------------------------------------------------------------


def _best(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs]
    return min(values) if key.endswith("_ms") else max(values)


def _clean(runs: list[dict[str, Any]]) -> bool:
    """Nothing lost or dropped, no call failed."""
    return all(not r.get("lost") and not r.get("gaps") and not r.get("errors") for r in runs)


def _figure(
    name: str,
    ours: list[dict[str, Any]] | None,
    reference: list[dict[str, Any]] | None,
    reference_name: str,
    key: str,
    unit: str,
    target: float | None = None,
) -> Figure | None:
    """Ours beside the reference; with a target: a ratio that must reach it. None when
    ours was not measured (skipped for time)."""
    if not ours:
        return None
    value = _best(ours, key)
    ref = _best(reference, key) if reference else None
    ratio = round(value / ref, 3) if ref else None
    passed: bool | None = None if _clean(ours) else False
    goal = "—"
    if target is not None:
        goal = f">= {target:g}x ref" + ("" if reference else " (ref unavailable)")
        if reference and passed is None:
            passed = ratio is not None and ratio >= target
    details = {"runs": ours, "reference_runs": reference} if unit != "ms" else {}
    return Figure(
        "bus",
        name,
        value,
        unit,
        goal,
        passed,
        reference=ref,
        reference_name=reference_name if reference else "",
        ratio=ratio,
        details=details,
    )


def figures_of(runs: Runs) -> list[Figure]:
    """Every figure whose runs are there, in the order of the table."""
    figures: list[Figure | None] = []
    for size in SIZES:
        reference = runs.get(("rate", "mqtt", size))
        for side, transport in TRANSPORT.items():
            ours, where = runs.get(("rate", side, size)), f"{size_label(size)}, {transport}"
            figures.append(
                _figure(
                    f"pub -> sub msgs/s, {where}",
                    ours,
                    reference,
                    MQTT_NAME,
                    "msgs_per_s",
                    "msg/s",
                    TARGET_PUBSUB,
                )
            )
            figures.append(
                _figure(
                    f"pub -> sub p99 at full speed, {where}",
                    ours,
                    reference,
                    MQTT_NAME,
                    "p99_ms",
                    "ms",
                )
            )
    size = SIZES[0]
    figures.append(
        _figure(
            f"pub -> sub msgs/s, {size_label(size)}, Unix socket, one BusClient.publish each",
            runs.get(("rate", "unix-client", size)),
            runs.get(("rate", "mqtt", size)),
            MQTT_NAME,
            "msgs_per_s",
            "msg/s",
        )
    )
    for side, transport in TRANSPORT.items():
        figures.append(
            _figure(
                f"pub -> sub p99 at {PACED_RATE:,.0f} msg/s, {size_label(size)}, {transport}",
                runs.get(("paced", side)),
                runs.get(("paced", "mqtt")),
                MQTT_NAME,
                "p99_ms",
                "ms",
            )
        )
    for callers in CONCURRENCY:
        ours, reference = runs.get(("call", "unix", callers)), runs.get(("call", "nats", callers))
        what = f"{callers} caller{'s' if callers > 1 else ''}, Unix socket"
        figures.append(
            _figure(
                f"request/reply round trips/s, {what}",
                ours,
                reference,
                NATS_NAME,
                "round_trips_per_s",
                "rt/s",
                TARGET_REQREP,
            )
        )
        figures.append(
            _figure(f"request/reply p99, {what}", ours, reference, NATS_NAME, "p99_ms", "ms")
        )
    ours, reference = runs.get(("fanout", "unix")), runs.get(("fanout", "mqtt"))
    subscribers = FANOUT_PROCESSES * FANOUT_PER_PROCESS
    name = f"fan-out to {subscribers} subscribers, {size_label(size)}, Unix socket"
    same = f"{MQTT_NAME}, same topology"
    figures.append(_figure(f"{name}: deliveries/s", ours, reference, same, "msgs_per_s", "msg/s"))
    figures.append(_figure(f"{name}: p99", ours, reference, same, "p99_ms", "ms"))
    return [f for f in figures if f is not None]


# --- the benchmark ---------------------------------------------------------------------


def _start_references(setup: Setup) -> dict[str, str]:
    """Start what is available; what is not is said in `setup.unavailable`."""
    binaries = ensure_reference_servers()
    versions = {}
    clients = {"mosquitto": "paho", "nats-server": "nats"}
    for binary, path in binaries.items():
        module = clients[binary]
        if path is None:
            setup.unavailable[binary] = "not installed (apt-get failed)"
            continue
        if importlib.util.find_spec(module) is None:
            setup.unavailable[binary] = f"Python client {module!r} missing: pip install '.[bench]'"
            continue
        try:
            if binary == "mosquitto":
                setup.mosquitto = Mosquitto(path, setup.root)
                versions[binary] = server_version(path, "-h")
            else:
                setup.nats = NatsServer(path, setup.root)
                versions[binary] = server_version(path, "--version")
        except RuntimeError as exc:
            setup.unavailable[binary] = f"did not start: {exc}"
    for binary, why in setup.unavailable.items():
        log(f"bus: reference {binary} unavailable: {why}")
    return versions


# (phase, latest start in s since the benchmark began): the first round of everything,
# then a second round of 1 and 2 while the 300 s limit leaves room (a round takes ~60 s
# on an idle machine, 150 s on a busy one).
PHASES = (
    (pubsub_round, 200.0),
    (request_reply_round, 220.0),
    (fanout_round, 220.0),
    (paced_round, 240.0),
    (pubsub_round, SECOND_ROUND_BEFORE_S),
    (request_reply_round, SECOND_ROUND_BEFORE_S + 60.0),
)


def measure(setup: Setup, began: float) -> Runs:
    runs: Runs = {}
    wanted = os.environ.get("BENCH_BUS_PHASES")  # e.g. "pubsub,request_reply" while tuning
    for phase, latest_start in PHASES:
        if wanted and phase.__name__.removesuffix("_round") not in wanted.split(","):
            continue
        elapsed = time.monotonic() - began
        if elapsed > latest_start:
            log(f"bus: {phase.__name__} skipped: {elapsed:.0f} s > {latest_start:g} s")
            continue
        phase(setup, runs)
    return runs


def run() -> list[Figure]:
    began = time.monotonic()
    with scratch_dir("bus") as root:
        appliance = Server("appliance", root, name="bus")
        setup = None
        try:
            appliance.wait_ready()
            token = (appliance.data_dir / "admin.token").read_text().strip()
            endpoints = json.loads((appliance.data_dir / "run" / "endpoints.json").read_text())
            setup = Setup(root, token, endpoints, appliance.proc.pid)
            versions = _start_references(setup)
            log(f"bus: appliance {endpoints['bus_unix']} {endpoints['bus_tcp']}; {versions}")
            runs = measure(setup, began)
        finally:
            for server in (setup.mosquitto, setup.nats) if setup else ():
                if server is not None:
                    server.stop()
            appliance.stop()
    figures = figures_of(runs)
    if not figures:
        raise RuntimeError("no run finished in time")
    figures[0].details.update(
        {
            "reference_versions": versions,
            "unavailable": setup.unavailable,
            "messages": COUNT,
            "batch": BATCH,
            "calls": CALLS,
            "fanout": {
                "processes": FANOUT_PROCESSES,
                "per_process": FANOUT_PER_PROCESS,
                "messages": FANOUT_COUNT,
            },
            "paced": {"messages": PACED_COUNT, "rate": PACED_RATE},
        }
    )
    return figures


if os.environ.get("BENCH_BUS_QUICK"):  # a smoke run while developing
    COUNT, CALLS, FANOUT_COUNT, PACED_COUNT = 2_000, 300, 100, 300
