"""The failures the failure table injects, as real as they come: a raw HTTP upload the
test drives byte by byte (pause, trickle, resume, reset), the boot state's lock held as a
stuck `firmware` process would hold it, directories planted where a write must create a
file, a process stopped (SIGSTOP) and the watchdog systemd would run over it.

Every wait here is bounded and fails with what it saw.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BOUND_S = 60.0  # every wait of the table: far above what a healthy step takes
TRICKLE_S = 0.2  # a trickling sender sends a byte this often (far below the stall timeout)
SEND_BYTES = 64 << 10


def wait_for(what: str, check: Callable[[], Any], bound: float = BOUND_S) -> Any:
    """Poll `check()` until it returns something true; AssertionError after `bound`."""
    deadline = time.monotonic() + bound
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not after {bound} s (last seen: {last!r})")


# --- processes --------------------------------------------------------------------------


def proc_state(pid: int) -> str:
    """The kernel's state letter of `pid` (`T`: stopped), `gone` once it was reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


def wait_stopped(pid: int) -> None:
    """The process stopped itself (the test-only pause point) or was stopped."""
    wait_for(f"process {pid} stopped", lambda: proc_state(pid) == "T")


def holds_open(pid: int, path: Path) -> bool:
    """Whether `pid` has `path` open (e.g. the state lock it is waiting to take)."""
    target = str(path)
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return True
    return False


def sigkill(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(BOUND_S)


def play_watchdog(proc: subprocess.Popen, pings: Callable[[], int], period: float) -> None:
    """systemd's `WatchdogSec=period`: once no WATCHDOG=1 came for `period`, SIGKILL. The
    process must have pinged before (it was watched); one that goes on pinging is not hung,
    and fails the test after the bound."""
    seen = pings()
    assert seen > 0, "the process never pinged the watchdog"
    since = time.monotonic()
    deadline = since + BOUND_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = pings()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= period:
            sigkill(proc)
            return
    raise AssertionError(f"the process went on pinging the watchdog for {BOUND_S} s")


# --- the file system --------------------------------------------------------------------


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """Hold the boot state's lock (`flock`) as a stuck `firmware` process would."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else may hold it now
        yield
    finally:
        os.close(fd)  # the kernel drops the lock with the last descriptor


@contextlib.contextmanager
def planted(*paths: Path) -> Iterator[None]:
    """A directory where a write must create a file (a durable write's temp file): the
    open fails with EISDIR, a real I/O error of the real code. Removed on leaving."""
    for path in paths:
        path.mkdir()
        (path / "keep").write_bytes(b"")  # not empty: not removable by unlink or rmdir
    try:
        yield
    finally:
        for path in paths:
            (path / "keep").unlink()
            path.rmdir()


# --- a raw upload -----------------------------------------------------------------------


class Upload:
    """`POST /api/v1/ota/bundles` over a plain socket, sent by a thread of its own: the
    head, then `data` up to `pause_at` (all of it without), then, paused, either silence or
    a byte every TRICKLE_S (`trickle`), until the test says `resume()` (the rest) or
    `reset()` (RST: the connection dies under the box), or the box answers first. While it
    sends, it watches for the answer, so an early one (408, 500) is never lost."""

    def __init__(
        self,
        url: str,
        token: str,
        data: bytes,
        *,
        pause_at: int | None = None,
        trickle: bool = False,
    ) -> None:
        parts = urlsplit(url)
        self.data = data
        self.sent = 0
        self.pause_at = pause_at
        self.trickle = trickle
        self.status: int | None = None
        self.body: dict[str, Any] | None = None
        self.error: OSError | None = None
        self._commands: queue.Queue[str] = queue.Queue()
        self._done = threading.Event()
        self._head = (
            f"POST /api/v1/ota/bundles HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=BOUND_S)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def resume(self) -> None:
        self._commands.put("resume")

    def reset(self) -> None:
        self._commands.put("reset")

    def close(self) -> None:
        """Give up the upload (if still under way) and close the connection."""
        self._commands.put("close")
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread if it waits to read
        self._thread.join(BOUND_S)
        self.sock.close()

    def response(self) -> tuple[int, dict[str, Any]]:
        """The box's answer (status, JSON body); AssertionError if none came."""
        if not self._done.wait(BOUND_S):
            raise AssertionError(f"no answer to the upload in {BOUND_S} s ({self.sent} sent)")
        if self.status is None:
            raise AssertionError(f"the upload got no answer: {self.error!r}")
        return self.status, self.body or {}

    def finished(self) -> bool:
        return self._done.is_set()

    def _run(self) -> None:
        try:
            self.sock.sendall(self._head)
            answered = self._send_until(len(self.data) if self.pause_at is None else self.pause_at)
            if not answered and self.pause_at is not None and not self._paused():
                return  # reset or closed: no answer to read
            self._read_response()
        except OSError as exc:
            self.error = exc
        finally:
            self._done.set()

    def _paused(self) -> bool:
        """Wait for a command; False when the upload ends without an answer to read."""
        while True:
            try:
                command = self._commands.get(timeout=TRICKLE_S)
            except queue.Empty:
                if select.select([self.sock], [], [], 0)[0]:
                    return True  # the box answered while we were silent
                if self.trickle and self.sent < len(self.data) - 1:
                    self.sock.sendall(self.data[self.sent : self.sent + 1])
                    self.sent += 1
                continue
            if command == "resume":
                self._send_until(len(self.data))
                return True
            if command == "reset":
                linger = struct.pack("ii", 1, 0)  # close at once with RST, not FIN
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.sock.close()
                return False
            return False  # close

    def _send_until(self, end: int) -> bool:
        """Send up to `end`; True if the box answered first (stop sending, read it)."""
        while self.sent < end:
            readable, writable, _ = select.select([self.sock], [self.sock], [], BOUND_S)
            if readable:
                return True
            if not writable:
                raise TimeoutError(f"the box took nothing for {BOUND_S} s")
            piece = self.data[self.sent : min(end, self.sent + SEND_BYTES)]
            self.sent += self.sock.send(piece)
        return False

    def _read_response(self) -> None:
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the box closed the connection: {buffer!r}")
            buffer += chunk
        head, _, body = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        length = int({k.lower(): v for k, v in headers.items()}.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            body += chunk
        self.body = json.loads(body) if body else None
        self.status = int(lines[0].split()[1])
