"""`tasks`: task round trips over HTTP, and the event loop's responsiveness under kernels.

Against the real appliance (`python -m appliance run`, rate limit at 1e6 as in `http`,
the admin token from the data dir):

1. Round trips: CLIENTS trio tasks sharing one `httpx.AsyncClient` (keep-alive), each in a
   loop: POST /api/v1/tasks (rms on 64 float64 samples, JSON), then one long poll
   GET /api/v1/tasks/{id}/result?wait=WAIT_S (held until the task ends); for DURATION_S after
   a WARMUP_S warm-up. Round trips/s and p50/p99 of submit -> result. No reference. The
   client runs on the same machine and shares its cores: its CPU time and the appliance's
   are in the details, to show which side was saturated.
2. Responsiveness: GET /api/v1/health p50/p99 with `wrk -t1 -c8 -d5s --latency`, first with
   the box idle, then while FEEDERS clients keep the queue fed with long kernels (fir, 1024
   taps, on 4M float32 samples sent as CBOR: ~0.5 s of one core each), FEEDERS = cores + 2
   so that a task is always queued for every slot (one per core). Reported: the loaded p50
   and p99 with the idle ones as reference (no target; MISSED only if a request failed).
3. Whether that load really kept every core in a kernel: GET /api/v1/scheduler sampled
   every SAMPLE_S during the loaded wrk; the mean of `running` against `capacity`, target
   >= TARGET_BUSY of the slots (else the loaded latency above was measured on idle cores).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import cbor2
import httpx
import numpy as np
import trio

from bench.common import Figure, log, percentile, scratch_dir
from bench.http_bench import Server, WrkResult, ensure_wrk, parse_wrk

CLIENTS = 32
DURATION_S = 8.0
WARMUP_S = 1.0
WAIT_S = 20  # the long poll on each task's result (`?wait=`)
SMALL_SAMPLES = 64
WRK_CONNECTIONS = 8
WRK_DURATION_S = 5
FIR_TAPS = 1024
FIR_SAMPLES = 4 * 1024 * 1024
FEEDERS = (os.cpu_count() or 1) + 2  # every slot busy, and one task queued behind each
BUSY_WAIT_S = 5.0  # for the feeders to fill every slot before wrk starts
SAMPLE_S = 0.1  # scheduler status sampled this often during the loaded wrk
TARGET_BUSY = 0.9  # of the slots, on average, while the queue is fed
START_TIMEOUT_S = 120.0  # a cold numba cache compiles every kernel first (~30 s)
HEALTH = "/api/v1/health"


def _cpu_s(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Counts:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _round_trip(http: httpx.AsyncClient, body: dict[str, Any], counts: Counts) -> None:
    began = time.perf_counter()
    submitted = await http.post("/api/v1/tasks", json=body)
    if submitted.status_code != 202:
        counts.error(f"POST {submitted.status_code}")
        await trio.sleep(0.01)
        return
    task_id = submitted.json()["id"]
    # One long poll: the server holds the request until the task has ended.
    result = await http.get(f"/api/v1/tasks/{task_id}/result", params={"wait": WAIT_S})
    if result.status_code != 200 or "rms" not in result.json()["outputs"]:
        counts.error(f"GET result {result.status_code}")
        return
    counts.latencies.append(time.perf_counter() - began)


async def round_trips(url: str, token: str, seconds: float, clients: int) -> Counts:
    rng = np.random.default_rng(7)
    body = {"kernel": "rms", "params": {}, "input": rng.standard_normal(SMALL_SAMPLES).tolist()}
    counts = Counts()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=30.0
    ) as http:

        async def client(until: float) -> None:
            while time.perf_counter() < until:
                await _round_trip(http, body, counts)

        until = time.perf_counter() + seconds
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(client, until)
    return counts


class Feed:
    """Clients that keep the scheduler busy with long fir tasks (CBOR bodies)."""

    def __init__(self) -> None:
        samples = np.random.default_rng(11).standard_normal(FIR_SAMPLES).astype("<f4")
        self.body = cbor2.dumps(
            {
                "kernel": "fir",
                "params": {"taps": [1 / FIR_TAPS] * FIR_TAPS},
                "input": {"dtype": "float32", "shape": [FIR_SAMPLES], "data": samples.tobytes()},
            }
        )
        self.submitted = 0
        self.finished: list[dict[str, Any]] = []
        self.errors: dict[str, int] = {}

    async def feeder(self, http: httpx.AsyncClient) -> None:
        headers = {"Content-Type": "application/cbor"}
        while True:
            submitted = await http.post("/api/v1/tasks", content=self.body, headers=headers)
            if submitted.status_code not in (200, 202):
                key = f"POST {submitted.status_code}"
                self.errors[key] = self.errors.get(key, 0) + 1
                await trio.sleep(0.5)
                continue
            self.submitted += 1
            task_id = submitted.json()["id"]
            while True:
                polled = await http.get(f"/api/v1/tasks/{task_id}", params={"wait": WAIT_S})
                task = polled.json()
                if task["finished"]:
                    self.finished.append(task)
                    break

    async def wait_busy(self, http: httpx.AsyncClient, slots: int, seconds: float) -> int:
        """Wait (up to `seconds`) until the scheduler runs `slots` tasks; return how many
        it runs."""
        running = 0
        with trio.move_on_after(seconds):
            while running < slots:
                running = (await http.get("/api/v1/scheduler")).json().get("running", 0)
                if running < slots:
                    await trio.sleep(0.05)
        return running


async def _wrk(wrk: str, url: str) -> tuple[WrkResult, str]:
    command = [
        wrk,
        "-t1",
        f"-c{WRK_CONNECTIONS}",
        f"-d{WRK_DURATION_S}s",
        "--latency",
        url + HEALTH,
    ]
    with trio.fail_after(WRK_DURATION_S + 30):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    output = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.decode()}{output}")
    return parse_wrk(output), " ".join(command[:-1]) + f" URL{HEALTH}"


async def loaded_health(wrk: str, url: str, token: str) -> dict[str, Any]:
    feed = Feed()
    headers = {"Authorization": f"Bearer {token}"}
    samples: list[dict[str, Any]] = []

    async def sample(http: httpx.AsyncClient, stop: trio.Event) -> None:
        while not stop.is_set():
            samples.append((await http.get("/api/v1/scheduler")).json())
            with trio.move_on_after(SAMPLE_S):
                await stop.wait()

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60.0) as http:
        capacity = int((await http.get("/api/v1/scheduler")).json()["capacity"])
        async with trio.open_nursery() as nursery:
            for _ in range(FEEDERS):
                nursery.start_soon(feed.feeder, http)
            running_at_start = await feed.wait_busy(http, capacity, BUSY_WAIT_S)
            log(f"tasks: {running_at_start} of {capacity} slots running fir; wrk on {HEALTH}")
            began = len(feed.finished)
            stop = trio.Event()
            nursery.start_soon(sample, http, stop)
            result, command = await _wrk(wrk, url)
            stop.set()
            during = feed.finished[began:]
            nursery.cancel_scope.cancel()
    kernel_s = [
        t["finished_at"] - t["started_at"]
        for t in feed.finished
        if t.get("started_at") and t.get("finished_at")
    ]
    states: dict[str, int] = {}
    for task in feed.finished:
        states[task["state"]] = states.get(task["state"], 0) + 1
    running = [s["running"] for s in samples]
    return {
        "wrk": result,
        "command": command,
        "capacity": capacity,
        "running_at_wrk_start": running_at_start,
        "running_mean_during_wrk": round(statistics.fmean(running), 2) if running else 0.0,
        "queue_depth_mean_during_wrk": (
            round(statistics.fmean(s["queue_depth"] for s in samples), 2) if samples else 0.0
        ),
        "scheduler_samples": len(samples),
        "fir_tasks_submitted": feed.submitted,
        "fir_tasks_finished": len(feed.finished),
        "fir_tasks_finished_during_wrk": len(during),
        "fir_states": states,
        "fir_task_s_median": round(statistics.median(kernel_s), 3) if kernel_s else None,
        "fir_body_bytes": len(feed.body),
        "feed_errors": feed.errors,
    }


def _summary(counts: Counts, seconds: float) -> dict[str, Any]:
    done = len(counts.latencies)
    return {
        "round_trips": done,
        "seconds": seconds,
        "round_trips_per_s": round(done / seconds, 1),
        "p50_ms": round(percentile(counts.latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(counts.latencies, 0.99) * 1000, 2),
        "errors": counts.errors,
    }


def run() -> list[Figure]:
    wrk = ensure_wrk()
    with scratch_dir("tasks") as root:
        began = time.perf_counter()
        server = Server("appliance", root)
        try:
            server.wait_ready(START_TIMEOUT_S)
            log(f"tasks: appliance ready in {time.perf_counter() - began:.1f} s")
            token = (root / "data" / "admin.token").read_text().strip()
            pid = server.proc.pid

            trio.run(round_trips, server.url, token, WARMUP_S, CLIENTS)
            app_cpu0, bench_cpu0, wall0 = _cpu_s(pid), time.process_time(), time.perf_counter()
            counts = trio.run(round_trips, server.url, token, DURATION_S, CLIENTS)
            wall = time.perf_counter() - wall0
            app_cpu = _cpu_s(pid) - app_cpu0
            bench_cpu = time.process_time() - bench_cpu0
            trips = _summary(counts, round(wall, 3))
            trips.update(
                clients=CLIENTS,
                input_samples=SMALL_SAMPLES,
                wait_s=WAIT_S,
                warmup_s=WARMUP_S,
                appliance_cpu_pct=round(app_cpu / wall * 100, 1),
                client_cpu_pct=round(bench_cpu / wall * 100, 1),
                cpus=os.cpu_count(),
            )
            log(
                f"tasks: {trips['round_trips_per_s']} round trips/s, p50 {trips['p50_ms']} ms, "
                f"p99 {trips['p99_ms']} ms; CPU appliance {trips['appliance_cpu_pct']} %, "
                f"client {trips['client_cpu_pct']} %"
            )

            time.sleep(1.0)  # let the last round trips' commits settle
            idle, command = trio.run(_wrk, wrk, server.url)
            log(f"tasks: idle health p50 {idle.p50_ms:.2f} ms, p99 {idle.p99_ms:.2f} ms")
            loaded = trio.run(loaded_health, wrk, server.url, token)
            busy: WrkResult = loaded.pop("wrk")
            log(
                f"tasks: loaded health p50 {busy.p50_ms:.2f} ms, p99 {busy.p99_ms:.2f} ms; "
                f"{loaded['fir_tasks_finished_during_wrk']} fir tasks finished meanwhile"
            )
        finally:
            server.stop()
            if server.proc.returncode not in (0, None):
                log(f"tasks: the appliance exited {server.proc.returncode}")

    clean_trips = not counts.errors and len(counts.latencies) > 0
    loaded_ok = busy.non_2xx == 0 and idle.non_2xx == 0
    busy_share = loaded["running_mean_during_wrk"] / loaded["capacity"]
    health_details = {
        "command": command,
        "idle": idle.as_dict(),
        "loaded": busy.as_dict(),
        **loaded,
        "fir": f"{FIR_TAPS} taps, {FIR_SAMPLES} float32 samples, CBOR",
        "feeders": FEEDERS,
    }
    clean = "" if clean_trips else f"; errors: {counts.errors}"
    figures = [
        Figure(
            "tasks",
            f"submit->result round trips/s, {CLIENTS} clients (rms, {SMALL_SAMPLES} samples)",
            trips["round_trips_per_s"],
            "trips/s",
            "—",
            None if clean_trips else False,
            details=trips,
        ),
        Figure("tasks", "submit->result latency p50" + clean, trips["p50_ms"], "ms", "—", None),
        Figure("tasks", "submit->result latency p99" + clean, trips["p99_ms"], "ms", "—", None),
    ]
    for q, idle_ms, busy_ms in (
        ("p50", idle.p50_ms, busy.p50_ms),
        ("p99", idle.p99_ms, busy.p99_ms),
    ):
        figures.append(
            Figure(
                "tasks",
                f"GET {HEALTH} {q}, c={WRK_CONNECTIONS}, all cores in kernels",
                round(busy_ms, 2),
                "ms",
                "—",
                None if loaded_ok else False,
                reference=round(idle_ms, 2),
                reference_name="same, box idle",
                ratio=round(busy_ms / idle_ms, 2) if idle_ms else None,
                details=health_details if q == "p50" else {},
            )
        )
    figures.append(
        Figure(
            "tasks",
            f"kernel slots busy while the queue is fed (of {loaded['capacity']})",
            loaded["running_mean_during_wrk"],
            "slots",
            f">= {TARGET_BUSY:.0%} of slots",
            busy_share >= TARGET_BUSY,
            ratio=round(busy_share, 2),
            details={
                k: loaded[k]
                for k in (
                    "running_at_wrk_start",
                    "queue_depth_mean_during_wrk",
                    "scheduler_samples",
                )
            },
        )
    )
    if not math.isfinite(trips["p99_ms"]):
        raise RuntimeError(f"no round trip succeeded: {counts.errors}")
    return figures
