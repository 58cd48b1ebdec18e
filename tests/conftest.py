"""Shared fixtures: start the real `python -m appliance run` process and talk to it.

`appliance` starts one process per test on a temp data dir with port 0 and a fake
`NOTIFY_SOCKET` of our own; `shared_appliance` starts one per module for read-mostly
tests (role matrix, bad input). Nothing is mocked: the process, LMDB, sockets are real.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

# The first start of a run compiles every kernel (cold numba cache); later ones load them.
START_TIMEOUT_S = 180.0
_RUNS = itertools.count()

# One numba cache for the test run and every appliance it starts ($NUMBA_CACHE_DIR wins
# over the data dir's cache), so only the first process pays for compiling the kernels.
# Set before anything imports numba.
os.environ.setdefault(
    "NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "numba")
)


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """Fill the shared numba cache once, before any appliance starts, so that every start
    in the run loads its kernels instead of compiling them (and they don't race to)."""
    from appliance.kernels import load_kernels, warm_all

    warm_all(load_kernels(None), lambda done, total, name: None)


class FakeNotifySocket:
    """A datagram socket standing in for systemd's notify socket. Like systemd it reads all
    the time (a thread of the test process), since the kernel queues only a few datagrams
    and the appliance drops what does not fit rather than block."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            with self._lock:
                self.messages.append(fields)

    def drain(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self.messages)

    def wait_for(
        self, key: str, value: str | None = None, timeout: float = START_TIMEOUT_S
    ) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            messages = self.drain()
            for message in messages[seen:]:
                if key in message and (value is None or message[key] == value):
                    return message
            seen = len(messages)
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value} notification in {timeout} s: {self.messages}")

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return  # closed already
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as waker:
            waker.sendto(b"", str(self.path))  # an empty datagram ends the reader
        self._reader.join(timeout=5)
        self.sock.close()


class ApplianceProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        notify: bool = True,
        config: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        run_name = f"{data_dir.name}.{next(_RUNS)}"  # one data dir may be started twice
        self.notify = FakeNotifySocket(data_dir.parent / f"{run_name}.notify") if notify else None
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                (
                    "APPLIANCE_",
                    "NOTIFY_SOCKET",
                    "WATCHDOG_",
                    "LISTEN_",
                    "JOURNAL_STREAM",
                    "STATE_DIRECTORY",
                )
            )
        }
        if self.notify is not None:
            environment["NOTIFY_SOCKET"] = str(self.notify.path)
        environment.update(env or {})
        args = [
            sys.executable,
            "-m",
            "appliance",
            "run",
            "--data-dir",
            str(data_dir),
            "--http",
            "127.0.0.1:0",
            "--bus-tcp",
            "127.0.0.1:0",  # several appliances run at once: no fixed ports
        ]
        if config is not None:
            args += ["--config", str(config)]
        self.log_path = data_dir.parent / f"{run_name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args + (extra_args or []),
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
        self.url = ""
        self.token = ""

    def wait_ready(self) -> ApplianceProcess:
        endpoints = self.data_dir / "run" / "endpoints.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"appliance exited {self.proc.returncode}:\n{self.log()}")
            if endpoints.exists():
                url = json.loads(endpoints.read_text())["http"]
                try:
                    if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                        self.url = url
                        self.token = (self.data_dir / "admin.token").read_text().strip()
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"appliance not ready in {START_TIMEOUT_S} s:\n{self.log()}")

    def client(self, token: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, **{"timeout": 10, **kwargs})

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"appliance ignored {sig} for {timeout} s:\n{self.log()}"
                ) from None
        self._log.close()
        if self.notify is not None:
            self.notify.close()
        return self.proc.returncode


@pytest.fixture
def start_appliance(tmp_path: Path) -> Iterator[Callable[..., ApplianceProcess]]:
    started: list[ApplianceProcess] = []

    def start(data_dir: Path | None = None, *, ready: bool = True, **kwargs) -> ApplianceProcess:
        process = ApplianceProcess(data_dir or tmp_path / f"data{len(started)}", **kwargs)
        started.append(process)
        return process.wait_ready() if ready else process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.send_signal(signal.SIGKILL)
            process.proc.wait()
        process.stop()  # the process is gone: this closes its log and notify socket


@pytest.fixture
def appliance(start_appliance) -> ApplianceProcess:
    return start_appliance()


@pytest.fixture(scope="module")
def shared_appliance(tmp_path_factory) -> Iterator[ApplianceProcess]:
    """One process for a module of read-mostly tests. Its rate limit is raised so a module's
    many quick requests are not refused; the rate limit has tests of its own."""
    roomy = {"APPLIANCE_RATELIMIT_RATE": "10000", "APPLIANCE_RATELIMIT_BURST": "10000"}
    process = ApplianceProcess(tmp_path_factory.mktemp("shared") / "data", env=roomy)
    process.wait_ready()
    yield process
    process.stop()


def run_cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m appliance ARGS` and capture its output."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        input=input,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess]:
    return run_cli
