"""The bus benchmark's child processes: workers, and the reference servers it installs.

`Worker` is one client process (`bench.bus_workers` or `bench.bus_reference`): it says
`ready` on stdout once set up and writes its result to a JSON file; its stderr goes to a
log in the scratch directory, quoted when it fails. Every wait has a deadline and
`stop` is safe to call on a process that already ended.

The references come from Debian: `ensure_reference_servers` runs `apt-get install -y
mosquitto nats-server` when they are missing (and `apt-get update` if that fails). The
packages would start their system services on install where an init system allows it;
a `policy-rc.d` that refuses (exit 101) is put in place for the install when the machine
has none, so nothing but the processes started here ever runs them. `Mosquitto` and
`NatsServer` run on 127.0.0.1 with a free port and a config in the scratch directory.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import PROJECT, PYTHON, child_environment, log, stop_process, tail

PACKAGES = {"mosquitto": "mosquitto", "nats-server": "nats-server"}  # binary -> package
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
APT_TIMEOUT_S = 240


class WorkerFailed(RuntimeError):
    pass


def _which(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path=SBIN_PATH)


def ensure_reference_servers() -> dict[str, str | None]:
    """binary -> its path, or None when it is missing and could not be installed."""
    found = {binary: _which(binary) for binary in PACKAGES}
    missing = [PACKAGES[b] for b, path in found.items() if path is None]
    if missing:
        _apt_install(missing)
        found = {binary: _which(binary) for binary in PACKAGES}
    return found


def _apt_install(packages: list[str]) -> None:
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    log(f"bus: {', '.join(packages)} missing; running: {' '.join(command)}")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    placed_policy = False
    try:
        if not POLICY_RC_D.exists():
            POLICY_RC_D.write_text("#!/bin/sh\n# bench: no services started on install\nexit 101\n")
            POLICY_RC_D.chmod(0o755)
            placed_policy = True
        done = _run(command, environment)
        if done is not None and done.returncode != 0:
            log("bus: install failed; running: apt-get update, then the install again")
            _run(["apt-get", "update"], environment)
            done = _run(command, environment)
    except OSError as exc:
        log(f"bus: cannot install {', '.join(packages)}: {exc}")
        return
    finally:
        if placed_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    if done is None or done.returncode != 0:
        error = "timed out" if done is None else done.stderr.strip()[-300:]
        log(f"bus: apt-get failed, the references that are missing are unavailable: {error}")
        return
    for line in done.stdout.splitlines():
        if line.startswith(("Setting up", "The following NEW packages")):
            log(f"bus: apt-get: {line.rstrip()}")


def _run(command: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=APT_TIMEOUT_S, env=environment
        )
    except subprocess.TimeoutExpired:
        return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(
    port: int, proc: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}:\n{tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on {port} in {timeout:g} s:\n{tail(log_path)}")


class ReferenceServer:
    """A reference broker on 127.0.0.1:`port`, started now; `stop()` ends it."""

    name = ""

    def __init__(self, binary: str, root: Path) -> None:
        self.port = free_port()
        self.log_path = root / f"{self.name}.log"
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(binary, root), stdout=out, stderr=subprocess.STDOUT, cwd=root
            )
        try:
            _wait_listening(self.port, self.proc, self.log_path, 15.0)
        except BaseException:
            self.stop()
            raise

    def command(self, binary: str, root: Path) -> list[str]:
        raise NotImplementedError

    def stop(self) -> None:
        stop_process(self.proc, 5.0)


class Mosquitto(ReferenceServer):
    """mosquitto with `max_queued_messages 0` (no limit: like a `block` subscriber, a slow
    subscriber loses nothing; QoS 0 is never stored) and no persistence."""

    name = "mosquitto"

    def command(self, binary: str, root: Path) -> list[str]:
        conf = root / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 0\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        return [binary, "-c", str(conf)]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class NatsServer(ReferenceServer):
    name = "nats-server"

    def command(self, binary: str, root: Path) -> list[str]:
        return [binary, "-a", "127.0.0.1", "-p", str(self.port)]

    @property
    def target(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def server_version(binary: str, flag: str) -> str:
    try:
        done = subprocess.run([binary, flag], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "?"


class Worker:
    """`python -m MODULE ROLE TARGET --result FILE ARGS...` with the bench's environment."""

    def __init__(
        self,
        module: str,
        role: str,
        target: str,
        root: Path,
        label: str,
        args: list[str],
        env: dict[str, str] | None = None,
    ) -> None:
        self.label = label
        self.result_path = root / f"{label}.json"
        self.log_path = root / f"{label}.log"
        self.result_path.unlink(missing_ok=True)
        command = [PYTHON, "-m", module, role, target, "--result", str(self.result_path), *args]
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=PROJECT,
                env=child_environment(env),
            )
        self._buffer = b""

    def _failed(self, what: str) -> WorkerFailed:
        return WorkerFailed(f"{self.label}: {what}\n{tail(self.log_path)}")

    def wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"ready\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._failed(f"not ready in {timeout:g} s")
            readable, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.proc.wait(5)
                    raise self._failed(f"exited {self.proc.returncode} before ready")
                self._buffer += chunk

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._failed(f"not done in {timeout:g} s") from None
        if code != 0 or not self.result_path.exists():
            raise self._failed(f"exited {code}")
        return json.loads(self.result_path.read_text())

    def stop(self) -> None:
        stop_process(self.proc, 5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
