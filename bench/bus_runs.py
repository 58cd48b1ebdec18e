"""One measured run of the bus benchmark: its worker processes, started, waited for, stopped.

`pubsub` (one publisher, any number of subscribers) and `request_reply` (one responder,
one caller process) take a side, ours (`unix`, `tcp`: the appliance's bus through that
transport) or a reference (`mqtt`: paho through mosquitto; `nats`: nats-py through
nats-server), start the workers in order (subscribers or responder first, and only once
they say `ready` the publisher or caller), and return a summary dict: the rate, p50/p99
latency in ms, what was lost, and the CPU seconds each process spent (the server's read
from /proc). Every process is stopped in `finally`, whatever happened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bus_processes import Mosquitto, NatsServer, Worker
from bench.common import log, percentile

READY_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 60.0  # each worker's own deadline; the bench waits a little longer
OURS, REFERENCE = "bench.bus_workers", "bench.bus_reference"


@dataclass
class Setup:
    """Where everything listens, and the processes whose CPU time is read."""

    root: Path
    token: str
    endpoints: dict[str, str]  # the appliance's run/endpoints.json
    appliance_pid: int
    mosquitto: Mosquitto | None = None
    nats: NatsServer | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    runs: int = 0

    def label(self, what: str) -> str:
        """A unique name for a worker's result and log files."""
        self.runs += 1
        return f"{self.runs:03d}-{what}"

    def worker(self, module: str, role: str, target: str, what: str, args: list) -> Worker:
        args = [*map(str, args), "--deadline", str(RUN_TIMEOUT_S)]
        env = {"BENCH_BUS_TOKEN": self.token}
        return Worker(module, role, target, self.root, self.label(what), args, env)


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def cpu_s(pid: int) -> float:
    """utime + stime of a process so far, in seconds (NaN once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop_all(workers: list[Worker]) -> None:
    for worker in workers:
        worker.stop()


def pubsub(
    setup: Setup,
    side: str,
    size: int,
    count: int,
    *,
    processes: int = 1,
    per_process: int = 1,
    batch: int = 1,
    rate: float = 0,
) -> dict[str, Any]:
    """One publisher of `count` messages, `processes` x `per_process` subscribers.
    `batch` > 1: ours writes that many publishes per write (`bus_batch_publisher`);
    `rate` > 0: publish at that many msgs/s instead of as fast as possible."""
    if side == "mqtt":
        assert setup.mosquitto is not None
        module, sub_role, pub_role = REFERENCE, "mqtt-sub", "mqtt-pub"
        target, server_pid = setup.mosquitto.target, setup.mosquitto.proc.pid
    else:
        module, sub_role, pub_role = OURS, "sub", "pub"
        target, server_pid = setup.endpoints[f"bus_{side}"], setup.appliance_pid
    what = f"{side}-{size}"
    subscribers: list[Worker] = []
    workers: list[Worker] = []
    try:
        for p in range(processes):
            args = ["--connections", per_process, "--expect", count]
            subscribers.append(setup.worker(module, sub_role, target, f"{what}-sub{p}", args))
            workers.append(subscribers[-1])
        for worker in subscribers:
            worker.wait_ready(READY_TIMEOUT_S)
        server_cpu = cpu_s(server_pid)
        args = ["--count", count, "--size", size, "--batch", batch, "--rate", rate]
        publisher = setup.worker(module, pub_role, target, f"{what}-pub", args)
        workers.append(publisher)
        sent = publisher.result(RUN_TIMEOUT_S + 15)
        received = [w.result(RUN_TIMEOUT_S + 15) for w in subscribers]
        cpu = {
            "server": cpu_s(server_pid) - server_cpu,
            "publisher": sent["cpu_s"],
            "subscribers": sum(r["cpu_s"] for r in received),
        }
    finally:
        _stop_all(workers)
    connections = [c for r in received for c in r["connections"]]
    summary = _pubsub_summary(count, sent, connections)
    summary = {"side": side, "size": size, "batch": batch, "rate": rate, **summary}
    summary["cpu_s"] = {k: round(v, 2) for k, v in cpu.items()}
    log(
        f"bus: {side} {size_label(size)} x{len(connections)}"
        + (f" batch {batch}" if batch > 1 else "")
        + (f" at {rate:g}/s" if rate else "")
        + f": {summary['msgs_per_s']:,.0f} msg/s, p99 {summary['p99_ms']} ms, "
        f"{summary['elapsed_s']} s, cpu s {summary['cpu_s']}"
        + (f", LOST {summary['lost']}" if summary["lost"] else "")
        + (f", gaps {summary['gaps']}" if summary["gaps"] else "")
    )
    return summary


def _pubsub_summary(count: int, sent: dict[str, Any], connections: list[dict]) -> dict[str, Any]:
    """msgs/s = delivered / (last delivery anywhere - first publish)."""
    delivered = sum(c["received"] for c in connections)
    gaps = sum(c["gaps"] for c in connections)
    last = max((c["last_ns"] for c in connections if c["received"]), default=sent["started_ns"])
    elapsed_s = max(1e-9, (last - sent["started_ns"]) / 1e9)
    publish_s = max(1e-9, (sent["finished_ns"] - sent["started_ns"]) / 1e9)
    latencies = [us / 1000 for c in connections for us in c["latencies_us"]]
    return {
        "subscribers": len(connections),
        "sent": count,
        "delivered": delivered,
        "gaps": gaps,
        "lost": count * len(connections) - delivered - gaps,
        "elapsed_s": round(elapsed_s, 3),
        "msgs_per_s": round(delivered / elapsed_s, 1),
        "publish_msgs_per_s": round(count / publish_s, 1),
        "p50_ms": round(percentile(latencies, 0.5), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
    }


def request_reply(setup: Setup, side: str, callers: int, calls: int) -> dict[str, Any]:
    """One responder and one caller process with `callers` concurrent callers."""
    if side == "nats":
        assert setup.nats is not None
        module, serve_role, call_role = REFERENCE, "nats-serve", "nats-call"
        target, server_pid = setup.nats.target, setup.nats.proc.pid
    else:
        module, serve_role, call_role = OURS, "serve", "call"
        target, server_pid = setup.endpoints[f"bus_{side}"], setup.appliance_pid
    workers: list[Worker] = []
    try:
        responder = setup.worker(module, serve_role, target, f"{side}-serve", [])
        workers.append(responder)
        responder.wait_ready(READY_TIMEOUT_S)
        before = cpu_s(server_pid), cpu_s(responder.proc.pid)
        args = ["--count", calls, "--callers", callers, "--size", 64]
        caller = setup.worker(module, call_role, target, f"{side}-call{callers}", args)
        workers.append(caller)
        done = caller.result(RUN_TIMEOUT_S + 15)
        cpu = {
            "server": cpu_s(server_pid) - before[0],
            "responder": cpu_s(responder.proc.pid) - before[1],
            "caller": done["cpu_s"],
        }
    finally:
        _stop_all(workers)
    elapsed_s = max(1e-9, (done["finished_ns"] - done["started_ns"]) / 1e9)
    latencies = [us / 1000 for us in done["latencies_us"]]
    summary = {
        "side": side,
        "callers": callers,
        "calls": done["calls"],
        "ok": done["ok"],
        "errors": done["errors"],
        "elapsed_s": round(elapsed_s, 3),
        "round_trips_per_s": round(done["ok"] / elapsed_s, 1),
        "p50_ms": round(percentile(latencies, 0.5), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
    }
    log(
        f"bus: request/reply {side} c={callers}: {summary['round_trips_per_s']:,.0f}/s, "
        f"p99 {summary['p99_ms']} ms, {summary['elapsed_s']} s, cpu s {summary['cpu_s']}"
        + (f", errors {done['errors']}" if done["errors"] else "")
    )
    return summary
