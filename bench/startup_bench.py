"""`startup`: spawn to READY=1, cold and warm kernel cache, and the idle footprint.

READY=1 arrives on a fake NOTIFY_SOCKET (an AF_UNIX datagram socket bound here). The time is
from just before the spawn of `python -m appliance run` to the datagram; the appliance sends
it only once every kernel is loaded (compiled, or read from numba's cache). The numba cache
is chosen with NUMBA_CACHE_DIR (which wins over the data dir's own cache):

- cold kernel cache: COLD_STARTS starts, each on a fresh data dir with an empty cache dir
  (every kernel compiles); the median.
- warm kernel cache, fresh data dir: STARTS starts on fresh data dirs with the cache the
  last cold start filled (the first boot of a device whose cache was built beforehand).
- warm kernel cache, warm data dir: STARTS restarts on the last cold start's data dir, with
  its cache (an ordinary restart).

After the last restart's READY and a short settle, idle RSS (VmRSS, with its split into
RssAnon and RssFile in the details) and idle CPU (utime+stime over IDLE_S of wall time,
/proc/PID/stat) of the process.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import time
from pathlib import Path

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

STARTS = 3
COLD_STARTS = 2  # each compiles every kernel: ~30 s on 2 cores
READY_TIMEOUT_S = 30.0
COLD_READY_TIMEOUT_S = 120.0
SETTLE_S = 2.0
IDLE_S = 10.0
TARGET_READY_S = 2.0
TARGET_RSS_MIB = 160.0
TARGET_CPU_PCT = 1.0


class Started:
    def __init__(self, proc: subprocess.Popen[bytes], seconds: float, log_path: Path) -> None:
        self.proc = proc
        self.seconds = seconds
        self.log_path = log_path


def start_until_ready(
    root: Path, data_dir: Path, label: str, cache: Path, timeout: float = READY_TIMEOUT_S
) -> Started:
    """Spawn the appliance with `cache` as its numba cache and return once READY=1 arrived
    on our notify socket."""
    notify_path = root / f"{label}.notify"
    notify_path.unlink(missing_ok=True)
    log_path = root / f"{label}.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        env = child_environment({"NOTIFY_SOCKET": str(notify_path), "NUMBA_CACHE_DIR": str(cache)})
        args = [
            PYTHON,
            "-m",
            "appliance",
            "run",
            "--data-dir",
            str(data_dir),
            "--http",
            "127.0.0.1:0",
            "--bus-tcp",
            "127.0.0.1:0",
        ]
        with log_path.open("wb") as out:
            began = time.perf_counter()
            proc = subprocess.Popen(
                args, env=env, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = began + timeout
        try:
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise RuntimeError(f"no READY=1 in {timeout:g} s:\n{tail(log_path)}")
                if proc.poll() is not None:
                    raise RuntimeError(f"exited {proc.returncode} before READY:\n{tail(log_path)}")
                notify.settimeout(min(remaining, 0.25))
                try:
                    data = notify.recv(65536)
                except TimeoutError:
                    continue
                if "READY=1" in data.decode(errors="replace").splitlines():
                    return Started(proc, time.perf_counter() - began, log_path)
        except BaseException:
            stop_process(proc)
            raise
        finally:
            notify_path.unlink(missing_ok=True)


def _cpu_ticks(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def _memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and its split (RssAnon: private memory; RssFile: mapped files such as shared
    libraries; RssShmem) from /proc/PID/status, in MiB."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name = line.split(":", 1)[0]
        if name in wanted:
            found[name] = round(int(line.split()[1]) / 1024, 1)
    if "VmRSS" not in found:
        raise RuntimeError("no VmRSS in /proc/PID/status")
    return found


def _starts(
    root: Path, label: str, data_dirs: list[Path], cache: Path, timeout: float, keep_last: bool
) -> tuple[list[float], Started]:
    """Start (and stop) the appliance once per data dir; the last one stays up if
    `keep_last`."""
    seconds: list[float] = []
    for index, data_dir in enumerate(data_dirs):
        started = start_until_ready(root, data_dir, f"{label}{index}", cache, timeout)
        seconds.append(started.seconds)
        log(f"startup: {label}: READY in {started.seconds:.3f} s")
        if not (keep_last and index == len(data_dirs) - 1):
            stop_process(started.proc)
    return seconds, started


def run() -> list[Figure]:
    with scratch_dir("startup") as root:
        caches = [root / f"numba-cold{i}" for i in range(COLD_STARTS)]
        cold: list[float] = []
        for index, cache in enumerate(caches):
            cache.mkdir()
            cold += _starts(
                root,
                f"cold-cache{index}-",
                [root / f"cold{index}"],
                cache,
                COLD_READY_TIMEOUT_S,
                keep_last=False,
            )[0]
        warm_cache = caches[-1]
        compiled = sum(1 for _ in warm_cache.rglob("*.nbi"))
        fresh, _ = _starts(
            root,
            "warm-cache-fresh-data",
            [root / f"fresh{i}" for i in range(STARTS)],
            warm_cache,
            READY_TIMEOUT_S,
            keep_last=False,
        )
        warm_dir = root / f"cold{COLD_STARTS - 1}"
        warm, started = _starts(
            root,
            "warm-cache-warm-data",
            [warm_dir] * STARTS,
            warm_cache,
            READY_TIMEOUT_S,
            keep_last=True,
        )
        # The last warm process stays up for the idle measurement.
        pid = started.proc.pid
        try:
            time.sleep(SETTLE_S)
            ticks_per_s = os.sysconf("SC_CLK_TCK")
            ticks0, wall0 = _cpu_ticks(pid), time.perf_counter()
            time.sleep(IDLE_S)
            ticks1, wall1 = _cpu_ticks(pid), time.perf_counter()
            memory = _memory_mib(pid)
            rss = memory["VmRSS"]
        finally:
            code = stop_process(started.proc)
    cpu_pct = (ticks1 - ticks0) / ticks_per_s / (wall1 - wall0) * 100
    log(f"startup: idle RSS {rss:.1f} MiB, idle CPU {cpu_pct:.2f} % (exit {code} on SIGTERM)")
    cold_median = statistics.median(cold)
    fresh_median, warm_median = statistics.median(fresh), statistics.median(warm)
    ready_target = f"< {TARGET_READY_S:g} s"
    return [
        Figure(
            "startup",
            "spawn to READY=1, cold kernel cache (empty), fresh data dir",
            round(cold_median, 3),
            "s",
            "—",
            None,
            details={
                "starts_s": [round(s, 3) for s in cold],
                "numba_index_files_after": compiled,
            },
        ),
        Figure(
            "startup",
            "spawn to READY=1, warm kernel cache, fresh data dir",
            round(fresh_median, 3),
            "s",
            ready_target,
            fresh_median < TARGET_READY_S,
            details={"starts_s": [round(s, 3) for s in fresh]},
        ),
        Figure(
            "startup",
            "spawn to READY=1, warm kernel cache, warm data dir",
            round(warm_median, 3),
            "s",
            ready_target,
            warm_median < TARGET_READY_S,
            details={"starts_s": [round(s, 3) for s in warm]},
        ),
        Figure(
            "startup",
            "idle RSS after READY",
            round(rss, 1),
            "MiB",
            f"< {TARGET_RSS_MIB:g} MiB",
            rss < TARGET_RSS_MIB,
            details={"settle_s": SETTLE_S, "status_mib": memory},
        ),
        Figure(
            "startup",
            f"idle CPU over {IDLE_S:g} s",
            round(cpu_pct, 3),
            "%",
            f"< {TARGET_CPU_PCT:g} %",
            cpu_pct < TARGET_CPU_PCT,
            details={
                "ticks": ticks1 - ticks0,
                "clk_tck": ticks_per_s,
                "wall_s": round(wall1 - wall0, 3),
                "exit_code_on_sigterm": code,
            },
        ),
    ]
