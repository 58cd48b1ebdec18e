"""`store`: durable writes/s through the group-commit writer vs one LMDB sync commit per write.

Both sides write the same CBOR values (about 100 bytes) under distinct keys into an
environment opened with `sync=True`, in directories on the same real disk, for the same
wall-clock time. The appliance side is 64 trio tasks calling `Store.write` with the writer
running; the reference is a plain `lmdb.open(dir, sync=True)` environment and one
`with env.begin(write=True) as txn: txn.put(...)` per write on one thread.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import lmdb
import trio

from appliance.store import Store
from appliance.store.codec import encode_value, pack_key
from bench.common import Figure, disk_base, log, scratch_dir

TASKS = 64
DURATION_S = 5.0
ROUNDS = 2  # reference, appliance, reference, appliance: the better of each
WARMUP_S = 0.5
VALUE_BYTES = 100
TARGET_RATIO = 5.0


def _value_maker() -> tuple[int, Any]:
    """A padding length so that `encode_value(value(task, seq))` is about VALUE_BYTES long."""

    def value(task: int, seq: int, pad: int) -> dict[str, Any]:
        return {"task": task, "seq": seq, "payload": b"\xa5" * pad}

    overhead = len(encode_value(value(TASKS // 2, 5_000, 0)))
    return max(0, VALUE_BYTES - overhead), value


PAD, _value = _value_maker()


def make_value(task: int, seq: int) -> dict[str, Any]:
    return _value(task, seq, PAD)


def reference_sync_commits(path: Path, duration: float, tasks: int) -> dict[str, Any]:
    """One synchronous LMDB commit per write, single thread, for `duration` seconds.

    Writes the same keys in the same interleaving as the appliance side (key n belongs to
    task n % tasks): where keys land in the B-tree decides how many pages a commit writes."""
    env = lmdb.open(str(path), map_size=1 << 30, subdir=True, sync=True, metasync=True)
    try:

        def write(n: int, offset: int) -> None:
            task, seq = offset + n % tasks, n // tasks
            key = pack_key("bench", task, seq)
            with env.begin(write=True) as txn:
                txn.put(key, encode_value(make_value(task, seq)))

        n = 0
        warm_until = time.perf_counter() + WARMUP_S
        while time.perf_counter() < warm_until:
            write(n, tasks)
            n += 1
        latencies: list[float] = []
        start = time.perf_counter()
        deadline = start + duration
        now = start
        n = 0
        while now < deadline:
            write(n, 0)
            n += 1
            after = time.perf_counter()
            latencies.append(after - now)
            now = after
        elapsed = time.perf_counter() - start
    finally:
        env.close()
    return _summary(len(latencies), elapsed, latencies, commits=len(latencies))


async def _group_commit(path: Path, duration: float, tasks: int) -> dict[str, Any]:
    store = Store.open(path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve)

            async def worker(task: int, until: float, latencies: list[float] | None) -> None:
                seq = 0
                while time.perf_counter() < until:
                    key = pack_key("bench", task, seq)
                    value = make_value(task, seq)
                    began = time.perf_counter()
                    await store.write(lambda txn, k=key, v=value: txn.put("kv", k, v))
                    if latencies is not None:
                        latencies.append(time.perf_counter() - began)
                    seq += 1

            async with trio.open_nursery() as warm:
                until = time.perf_counter() + WARMUP_S
                for task in range(tasks):
                    warm.start_soon(worker, task + tasks, until, None)

            before = store.stats()
            latencies: list[float] = []
            start = time.perf_counter()
            async with trio.open_nursery() as workers:
                for task in range(tasks):
                    workers.start_soon(worker, task, start + duration, latencies)
            elapsed = time.perf_counter() - start
            after = store.stats()
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    commits = after["commits"] - before["commits"]
    return _summary(len(latencies), elapsed, latencies, commits=commits)


def _summary(writes: int, elapsed: float, latencies: list[float], *, commits: int) -> dict:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    return {
        "writes": writes,
        "elapsed_s": round(elapsed, 3),
        "writes_per_s": writes / elapsed if elapsed > 0 else 0.0,
        "commits": commits,
        "writes_per_commit": round(writes / commits, 2) if commits else None,
        "latency_ms_p50": round(pct(0.50), 3),
        "latency_ms_p99": round(pct(0.99), 3),
        "latency_ms_mean": round(statistics.fmean(ordered) * 1000, 3) if ordered else 0.0,
    }


def run() -> list[Figure]:
    base, fs_type = disk_base()
    log(f"store: data on {base} ({fs_type}); values {len(encode_value(make_value(0, 0)))} B")
    refs: list[dict[str, Any]] = []
    apps: list[dict[str, Any]] = []
    with scratch_dir("store") as root:
        for round_ in range(ROUNDS):
            log(f"store: reference, one sync LMDB commit per write, {DURATION_S:g} s")
            refs.append(reference_sync_commits(root / f"reference{round_}", DURATION_S, TASKS))
            log(f"store: reference {refs[-1]['writes_per_s']:.0f} writes/s")
            log(f"store: group commit, {TASKS} trio tasks, {DURATION_S:g} s")
            apps.append(trio.run(_group_commit, root / f"appliance{round_}", DURATION_S, TASKS))
            log(
                f"store: group commit {apps[-1]['writes_per_s']:.0f} writes/s, "
                f"{apps[-1]['writes_per_commit']} writes/commit"
            )
    ref = max(refs, key=lambda r: r["writes_per_s"])
    app = max(apps, key=lambda r: r["writes_per_s"])
    ratio = app["writes_per_s"] / ref["writes_per_s"] if ref["writes_per_s"] else 0.0
    return [
        Figure(
            benchmark="store",
            name=f"durable writes/s, {TASKS} tasks",
            value=round(app["writes_per_s"], 1),
            unit="writes/s",
            reference=round(ref["writes_per_s"], 1),
            reference_name="1 LMDB sync commit per write",
            ratio=round(ratio, 2),
            target=f">= {TARGET_RATIO:g}x",
            passed=ratio >= TARGET_RATIO,
            details={
                "filesystem": fs_type,
                "scratch_base": str(base),
                "value_bytes": len(encode_value(make_value(0, 0))),
                "tasks": TASKS,
                "duration_s": DURATION_S,
                "rounds": ROUNDS,
                "appliance": app,
                "reference": ref,
                "appliance_runs": apps,
                "reference_runs": refs,
            },
        )
    ]
