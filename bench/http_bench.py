"""`http`: GET /api/v1/health req/s and p99 at 32 keep-alive connections, with `wrk`.

The appliance (`python -m appliance run`) against the reference, a bare ASGI callable served
by hypercorn's trio worker with the appliance's hypercorn settings (bench/refserver.py),
returning the same JSON bytes with the same content-type. Each server runs alone; the order
is reference, appliance, reference, appliance, and the better run of each counts.

The appliance's per-client rate limit (50 req/s by default) would turn the load into 429s,
so the appliance runs with APPLIANCE_RATELIMIT_RATE/BURST at 1e6: the limiter still runs on
every request, it just never refuses one. Any non-2xx answer invalidates the figure.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    PROJECT,
    PYTHON,
    Figure,
    child_environment,
    log,
    scratch_dir,
    stop_process,
    tail,
)

PATH = "/api/v1/health"
THREADS = 2
CONNECTIONS = 32
DURATION_S = 8
WARMUP_S = 2
ROUNDS = 2
TARGET_SHARE = 0.85
TARGET_P99_MS = 50.0
START_TIMEOUT_S = 90.0  # a cold numba cache compiles every kernel first (~30 s)
APPLIANCE_ENV = {"APPLIANCE_RATELIMIT_RATE": "1000000", "APPLIANCE_RATELIMIT_BURST": "1000000"}

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_per_s": round(self.requests_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "requests": self.requests,
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
        }


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("http: wrk is not installed; running: apt-get install -y wrk")
    command = ["apt-get", "install", "-y", "--no-install-recommends", "wrk"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        log("http: install failed; running: apt-get update, then the install again")
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=180)
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    for line in done.stdout.splitlines():
        if line.startswith(("Setting up", "Unpacking", "The following NEW packages", "  ")):
            log(f"http: apt-get: {line.rstrip()}")
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError(f"could not install wrk: {done.stderr.strip()[-500:]}")
    return found


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in", output, re.MULTILINE)
    if not (rps and p50 and p99 and total):
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:\s*(.+)", output)
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=_duration_ms(p50.group(1)),
        p99_ms=_duration_ms(p99.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
    )


def run_wrk(wrk: str, url: str, duration_s: int) -> WrkResult:
    command = [wrk, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--latency", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


class Server:
    """One server process: the appliance or the reference, started and waited for."""

    def __init__(
        self,
        kind: str,
        root: Path,
        body_file: Path | None = None,
        content_type: str = "",
        *,
        name: str = "data",
        env: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.log_path = root / f"{kind}-{name}.log"
        self.url = ""
        self.data_dir = root / name
        if kind == "appliance":
            self.url_file = self.data_dir / "run" / "endpoints.json"
            args = [
                PYTHON,
                "-m",
                "appliance",
                "run",
                "--data-dir",
                str(self.data_dir),
                "--http",
                "127.0.0.1:0",
                "--bus-tcp",
                "127.0.0.1:0",
            ]
            env = child_environment({**APPLIANCE_ENV, **(env or {})})
        else:
            assert body_file is not None
            self.url_file = root / "reference.url"
            args = [
                PYTHON,
                "-m",
                "bench.refserver",
                str(body_file),
                content_type,
                str(self.url_file),
            ]
            env = child_environment()
        self.url_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                args, env=env, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> Server:
        """Wait until health answers 200 (the appliance answers 503 until READY)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited {self.proc.returncode}:\n{tail(self.log_path)}"
                )
            if self.url_file.exists():
                text = self.url_file.read_text()
                url = json.loads(text)["http"] if self.kind == "appliance" else text.strip()
                try:
                    if _get(url + PATH)[0] == 200:
                        self.url = url
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not ready in {timeout:g} s:\n{tail(self.log_path)}")

    def stop(self) -> None:
        stop_process(self.proc)


def _measure(wrk: str, server: Server) -> WrkResult:
    try:
        server.wait_ready()
        run_wrk(wrk, server.url + PATH, WARMUP_S)
        result = run_wrk(wrk, server.url + PATH, DURATION_S)
    finally:
        server.stop()
    log(
        f"http: {server.kind}: {result.requests_per_s:.0f} req/s, p99 {result.p99_ms:.2f} ms"
        + (f", {result.non_2xx} non-2xx" if result.non_2xx else "")
    )
    return result


def run() -> list[Figure]:
    wrk = ensure_wrk()
    version = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout
    with scratch_dir("http") as root:
        # The reference must answer with the appliance's own bytes: capture them first.
        capture = Server("appliance", root).wait_ready()
        try:
            status, body, content_type = _get(capture.url + PATH)
        finally:
            capture.stop()
        if status != 200:
            raise RuntimeError(f"the appliance's health answered {status}: {body[:200]!r}")
        body_file = root / "health.json"
        body_file.write_bytes(body)
        log(f"http: body {len(body)} B, content-type {content_type!r}")

        runs: dict[str, list[WrkResult]] = {"reference": [], "appliance": []}
        for _ in range(ROUNDS):
            runs["reference"].append(
                _measure(wrk, Server("reference", root, body_file, content_type))
            )
            runs["appliance"].append(_measure(wrk, Server("appliance", root)))

    ref_best = max(r.requests_per_s for r in runs["reference"])
    app_best = max(r.requests_per_s for r in runs["appliance"])
    ref_p99 = min(r.p99_ms for r in runs["reference"])
    app_p99 = min(r.p99_ms for r in runs["appliance"])
    clean = all(r.non_2xx == 0 for rs in runs.values() for r in rs)
    share = app_best / ref_best if ref_best else 0.0
    details = {
        "wrk": version.strip().splitlines()[0] if version.strip() else "wrk",
        "command": f"wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION_S}s --latency URL{PATH}",
        "warmup_s": WARMUP_S,
        "body_bytes": len(body),
        "content_type": content_type,
        "appliance_env": APPLIANCE_ENV,
        "all_non_2xx_free": clean,
        "runs": {kind: [r.as_dict() for r in rs] for kind, rs in runs.items()},
        "gap_req_per_s": round(TARGET_SHARE * ref_best - app_best, 1),
    }
    return [
        Figure(
            benchmark="http",
            name=f"GET {PATH} req/s, c={CONNECTIONS}",
            value=round(app_best, 1),
            unit="req/s",
            reference=round(ref_best, 1),
            reference_name="bare hypercorn ASGI",
            ratio=round(share, 3),
            target=f">= {TARGET_SHARE:.0%} of ref",
            passed=clean and share >= TARGET_SHARE,
            details=details,
        ),
        Figure(
            benchmark="http",
            name=f"GET {PATH} p99, c={CONNECTIONS}",
            value=round(app_p99, 2),
            unit="ms",
            reference=round(ref_p99, 2),
            reference_name="bare hypercorn ASGI",
            ratio=round(app_p99 / ref_p99, 2) if ref_p99 else None,
            target=f"< {TARGET_P99_MS:g} ms",
            passed=clean and app_p99 < TARGET_P99_MS,
            details={"all_non_2xx_free": clean},
        ),
    ]
