"""`config`: effective-config reads, change notification to watchers, hub -> replica.

Against real processes (`python -m appliance run`, rate limit at 1e6 as in `http`):

1. GET /api/v1/config/{key} (the effective content, 1 KiB of JSON) with `wrk`, 32
   connections, against the bare hypercorn reference of `http` answering the same bytes and
   content type; each server alone, two rounds, the better run of each. Target >= 85 % of
   the reference and p99 < 50 ms, as for the other small GETs.
2. Change -> watcher notified: WATCHERS SSE watchers (`GET /api/v1/config/watch`, raw
   sockets), CHANGES new versions written one after another over HTTP; for each change and
   watcher, the time from sending the write to the event arriving (so the write's own
   durable commit is included). p50/p99; target p99 < 20 ms.
3. Many watchers: MANY SSE watchers held at once; the appliance's RSS before and after they
   connect (per watcher), then one change and the time until every watcher has it.
   Target < 1 s.
4. Hub write -> visible on a replica: a second appliance follows the first (replica mode,
   a token of the replica role); one SSE watcher on the replica; REPLICA_CHANGES writes on
   the hub; p50/p99 from sending the write to the replica's event.

The client runs on the same machine and shares its two cores with the appliance. Its
watchers (parts 2-4) are raw sockets read by one thread with epoll (`Watchers`), not a trio
task each: per event and watcher that costs the client ~17 µs instead of ~45 µs, CPU the
appliance would otherwise have lost to it. What is timed has not changed: from just
before the write is sent (the writer is a plain httpx client in the main thread) to just
after the `recv` that brought the event, both on `time.perf_counter()`.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import Figure, log, percentile, scratch_dir
from bench.http_bench import DURATION_S, WARMUP_S, Server, ensure_wrk, parse_wrk

KEY = "bench/pump/prod/limits"
WATCHERS = 100
CHANGES = 1000
MANY = 10_000
REPLICA_CHANGES = 300
CONNECTIONS = 32
TARGET_SHARE = 0.85
TARGET_P99_MS = 50.0
TARGET_NOTIFY_P99_MS = 20.0
TARGET_ALL_NOTIFIED_S = 1.0
CONNECT_BATCH = 500
_ID = re.compile(rb"id: (\d+)\n")


def _content() -> str:
    body = {"pump": {"limit_bar": 3.5, "enabled": True}, "labels": [f"x{i}" for i in range(100)]}
    text = json.dumps(body)
    return text + " " * max(0, 1024 - len(text))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _raise_nofile() -> None:
    """Enough descriptors for MANY sockets in each process (the appliance inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MANY + 2048
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # needs CAP_SYS_RESOURCE
        except (ValueError, OSError):
            raise RuntimeError(f"RLIMIT_NOFILE hard limit {hard} < {want} needed") from None
    elif soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _token(data_dir: Path) -> str:
    return (data_dir / "admin.token").read_text().strip()


# 1. Effective-content reads ------------------------------------------------------------


def _wrk(wrk: str, url: str, token: str | None, seconds: int) -> Any:
    command = [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    done = subprocess.run([*command, url], capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def _put(http: httpx.Client, content: str) -> dict[str, Any]:
    response = http.post(
        f"/api/v1/config/{KEY}/versions", json={"format": "json", "content": content}
    )
    if response.status_code != 201:
        raise RuntimeError(f"POST version: {response.status_code} {response.text[:300]}")
    return response.json()


def reads(wrk: str, root: Path) -> list[Figure]:
    content = _content()
    runs: dict[str, list[Any]] = {"reference": [], "appliance": []}
    body_file = root / "content.json"
    body_file.write_text(content)
    for _ in range(2):
        reference = Server("reference", root, body_file, "application/json")
        try:
            reference.wait_ready()
            _wrk(wrk, reference.url + "/", None, WARMUP_S)
            runs["reference"].append(_wrk(wrk, reference.url + "/", None, DURATION_S))
        finally:
            reference.stop()
        server = Server("appliance", root, name="reads")
        try:
            server.wait_ready()
            token = _token(server.data_dir)
            with httpx.Client(base_url=server.url, headers=_auth(token), timeout=30) as http:
                _put(http, content)
                got = http.get(f"/api/v1/config/{KEY}")
                if got.status_code != 200 or got.text != content:
                    raise RuntimeError(f"GET {KEY}: {got.status_code} {got.text[:200]}")
            url = f"{server.url}/api/v1/config/{KEY}"
            _wrk(wrk, url, token, WARMUP_S)
            runs["appliance"].append(_wrk(wrk, url, token, DURATION_S))
        finally:
            server.stop()
        log(
            f"config: reads: appliance {runs['appliance'][-1].requests_per_s:.0f} req/s vs "
            f"reference {runs['reference'][-1].requests_per_s:.0f}"
        )
    clean = all(r.non_2xx == 0 for rs in runs.values() for r in rs)
    ref = max(r.requests_per_s for r in runs["reference"])
    app = max(r.requests_per_s for r in runs["appliance"])
    ref_p99 = min(r.p99_ms for r in runs["reference"])
    app_p99 = min(r.p99_ms for r in runs["appliance"])
    details = {
        "content_bytes": len(content),
        "connections": CONNECTIONS,
        "runs": {k: [r.as_dict() for r in rs] for k, rs in runs.items()},
    }
    return [
        Figure(
            "config",
            f"GET /api/v1/config/{{key}} req/s, c={CONNECTIONS}",
            round(app, 1),
            "req/s",
            f">= {TARGET_SHARE:.0%} of ref",
            clean and app / ref >= TARGET_SHARE,
            reference=round(ref, 1),
            reference_name="bare hypercorn ASGI, same bytes",
            ratio=round(app / ref, 3),
            details=details,
        ),
        Figure(
            "config",
            f"GET /api/v1/config/{{key}} p99, c={CONNECTIONS}",
            round(app_p99, 2),
            "ms",
            f"< {TARGET_P99_MS:g} ms",
            clean and app_p99 < TARGET_P99_MS,
            reference=round(ref_p99, 2),
            reference_name="bare hypercorn ASGI, same bytes",
            ratio=round(app_p99 / ref_p99, 2) if ref_p99 else None,
        ),
    ]


# 2-4. Watchers ------------------------------------------------------------------------


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Watchers:
    """SSE watchers on raw sockets, all read by one thread with epoll, which records when
    each revision's event arrives at each (`time.perf_counter()` just after the `recv`
    that brought it). One light loop instead of a task per watcher: the client shares the
    two cores with the appliance, and a heavier one would be measured with it."""

    def __init__(self, url: str, token: str, prefix: str = "bench/") -> None:
        self.host, self.port = _split(url)
        self.request = (
            f"GET /api/v1/config/watch?prefix={prefix} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        self.sockets: dict[int, socket.socket] = {}
        self.arrivals: dict[int, dict[int, float]] = {}  # fd -> revision -> time
        self.counts: dict[int, int] = {}
        self.complete: dict[int, threading.Event] = {}
        self.lock = threading.Lock()
        self.poll = select.epoll()
        self.stopped = False
        self.reader = threading.Thread(target=self._read, name="watchers", daemon=True)
        self.reader.start()

    def open(self, count: int) -> None:
        """`count` more watchers, each with its response's 200 headers read."""
        for start in range(0, count, CONNECT_BATCH):
            batch = []
            for _ in range(min(CONNECT_BATCH, count - start)):
                sock = socket.create_connection((self.host, self.port), timeout=60)
                sock.sendall(self.request)
                batch.append(sock)
            for sock in batch:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = sock.recv(65536)
                    if not data:
                        raise RuntimeError("a watcher was closed before the headers")
                    head += data
                head, _, rest = head.partition(b"\r\n\r\n")
                status = head.partition(b"\r\n")[0]
                if not status.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"a watcher got {status!r}")
                if _ID.search(rest):
                    raise RuntimeError("an event before any change was written")
                sock.setblocking(False)
                with self.lock:
                    self.sockets[sock.fileno()] = sock
                    self.arrivals[sock.fileno()] = {}
                self.poll.register(sock.fileno(), select.EPOLLIN)

    def _read(self) -> None:
        tails: dict[int, bytes] = {}
        while not self.stopped:
            for fd, _ in self.poll.poll(0.1):
                sock = self.sockets.get(fd)
                if sock is None:
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                now = time.perf_counter()
                if not data:
                    self.poll.unregister(fd)
                    continue
                buffer = tails.get(fd, b"") + data
                arrivals = self.arrivals[fd]
                for match in _ID.finditer(buffer):
                    revision = int(match.group(1))
                    if revision not in arrivals:
                        arrivals[revision] = now
                        self._arrived(revision)
                tails[fd] = buffer[-64:]

    def _arrived(self, revision: int) -> None:
        with self.lock:
            self.counts[revision] = self.counts.get(revision, 0) + 1
            if self.counts[revision] >= len(self.sockets):
                self.complete.setdefault(revision, threading.Event()).set()

    def event(self, revision: int) -> threading.Event:
        with self.lock:
            return self.complete.setdefault(revision, threading.Event())

    def wait_all(self, revision: int, timeout: float) -> list[float]:
        """Each watcher's arrival time of `revision`, once every watcher has it."""
        if not self.event(revision).wait(timeout):
            raise RuntimeError(f"not every watcher got revision {revision} in {timeout:g} s")
        return [arrivals[revision] for arrivals in self.arrivals.values()]

    def close(self) -> None:
        self.stopped = True
        self.reader.join()
        for sock in self.sockets.values():
            sock.close()
        self.poll.close()


def _split(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _timed_writes(url: str, token: str, count: int, watching: Watchers) -> list[float]:
    """Write `count` versions one after another; latencies (s) write-sent -> event."""
    latencies = []
    with httpx.Client(base_url=url, headers=_auth(token), timeout=30) as http:
        for i in range(count):
            sent = time.perf_counter()
            response = http.post(
                f"/api/v1/config/{KEY}/versions",
                json={"format": "json", "content": json.dumps({"i": i})},
            )
            if response.status_code != 201:
                raise RuntimeError(f"POST version: {response.status_code} {response.text[:200]}")
            arrived = watching.wait_all(response.json()["revision"], 10)
            latencies += [at - sent for at in arrived]
    return latencies


def _notify(url: str, token: str) -> dict[str, Any]:
    watching = Watchers(url, token)
    try:
        watching.open(WATCHERS)
        latencies = _timed_writes(url, token, CHANGES, watching)
    finally:
        watching.close()
    return {
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "samples": len(latencies),
    }


def _many(url: str, token: str, pid: int) -> dict[str, Any]:
    before = _rss_mib(pid)
    watching = Watchers(url, token)
    try:
        began = time.perf_counter()
        watching.open(MANY)
        connect_s = time.perf_counter() - began
        time.sleep(1.0)
        after = _rss_mib(pid)
        with httpx.Client(base_url=url, headers=_auth(token), timeout=60) as http:
            sent = time.perf_counter()
            response = http.post(
                f"/api/v1/config/{KEY}/versions", json={"format": "json", "content": "{}"}
            )
            last = max(watching.wait_all(response.json()["revision"], 60)) - sent
    finally:
        watching.close()
    return {
        "watchers": MANY,
        "connect_s": round(connect_s, 2),
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "rss_per_watcher_kib": round((after - before) * 1024 / MANY, 1),
        "all_notified_s": round(last, 3),
    }


def watchers(root: Path) -> list[Figure]:
    server = Server("appliance", root, name="watch")
    try:
        server.wait_ready()
        token = _token(server.data_dir)
        notify = _notify(server.url, token)
        log(
            f"config: change -> {WATCHERS} watchers: "
            f"p50 {notify['p50_ms']} ms, p99 {notify['p99_ms']} ms"
        )
        many = _many(server.url, token, server.proc.pid)
        log(f"config: {MANY} watchers: {many}")
    finally:
        server.stop()
    return [
        Figure(
            "config",
            f"change -> watcher notified p99, {WATCHERS} SSE watchers, {CHANGES} changes",
            notify["p99_ms"],
            "ms",
            f"< {TARGET_NOTIFY_P99_MS:g} ms",
            notify["p99_ms"] < TARGET_NOTIFY_P99_MS,
            details=notify,
        ),
        Figure("config", "change -> watcher notified p50", notify["p50_ms"], "ms", "—", None),
        Figure(
            "config",
            f"{MANY} watchers held: all notified of one change",
            many["all_notified_s"],
            "s",
            f"< {TARGET_ALL_NOTIFIED_S:g} s",
            many["all_notified_s"] < TARGET_ALL_NOTIFIED_S,
            details=many,
        ),
        Figure(
            "config",
            f"RSS per held watcher ({MANY})",
            many["rss_per_watcher_kib"],
            "KiB",
            "—",
            None,
        ),
    ]


def replica(root: Path) -> list[Figure]:
    hub = Server("appliance", root, name="hub")
    follower = None
    try:
        hub.wait_ready()
        token = _token(hub.data_dir)
        with httpx.Client(base_url=hub.url, headers=_auth(token), timeout=30) as http:
            created = http.post(
                "/api/v1/auth/tokens", json={"name": "bench-replica", "role": "replica"}
            )
            if created.status_code != 201:
                raise RuntimeError(f"replica token: {created.status_code} {created.text[:200]}")
            replica_token = created.json()["token"]
        follower = Server(
            "appliance",
            root,
            name="replica",
            env={
                "APPLIANCE_CONFIG_MODE": "replica",
                "APPLIANCE_CONFIG_UPSTREAM": hub.url,
                "APPLIANCE_CONFIG_UPSTREAM_TOKEN": replica_token,
            },
        )
        follower.wait_ready()

        watching = Watchers(follower.url, _token(follower.data_dir))
        try:
            watching.open(1)
            latencies = _timed_writes(hub.url, token, REPLICA_CHANGES, watching)
        finally:
            watching.close()
    finally:
        if follower is not None:
            follower.stop()
        hub.stop()
    p50 = round(percentile(latencies, 0.5) * 1000, 2)
    p99 = round(percentile(latencies, 0.99) * 1000, 2)
    log(f"config: hub write -> replica event: p50 {p50} ms, p99 {p99} ms")
    details = {"writes": REPLICA_CHANGES}
    return [
        Figure(
            "config", "hub write -> visible on a replica p50", p50, "ms", "—", None, details=details
        ),
        Figure("config", "hub write -> visible on a replica p99", p99, "ms", "—", None),
    ]


def run() -> list[Figure]:
    _raise_nofile()
    wrk = ensure_wrk()
    figures: list[Figure] = []
    with scratch_dir("config") as root:
        figures += reads(wrk, root)
        figures += watchers(root)
        figures += replica(root)
    return figures


if os.environ.get("BENCH_CONFIG_QUICK"):  # a smoke run while developing
    WATCHERS, CHANGES, MANY, REPLICA_CHANGES = 10, 50, 500, 30
