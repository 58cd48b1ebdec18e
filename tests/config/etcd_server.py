"""A real etcd for tests: Debian's `etcd-server`, one member on free loopback ports.

`running_etcd` (the body of a test module's `etcd` fixture) starts one per test in a temp
data dir and stops it afterwards; it can be stopped and started again on the same ports
and data (etcd down, etcd back).
Skipped with a reason when no `etcd` binary is installed (`.ci/run` installs it).
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class EtcdServer:
    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> EtcdServer:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            "--name=default",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--log-level=warn",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).json().get("health") == "true":
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"etcd not healthy in {START_TIMEOUT_S} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{self.url}{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def put(self, key: str, value: str | bytes) -> int:
        return int(
            self.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})["header"]["revision"]
        )

    def delete(self, key: str) -> int:
        return int(self.post("/v3/kv/deleterange", {"key": b64(key)})["header"]["revision"])

    def revision(self) -> int:
        return int(self.post("/v3/kv/range", {"key": b64("\0")})["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        revision = revision or self.revision()
        self.post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision


def running_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """The body of an `etcd` fixture: skip without the binary, start, yield, stop."""
    binary = shutil.which("etcd")
    if binary is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    server = EtcdServer(binary, tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.stop()
