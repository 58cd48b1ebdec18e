"""sd_notify: tell systemd about readiness, status, reloads, stops and liveness.

`format_notification` is the sans-IO part; `Notifier` sends one datagram per message to
`$NOTIFY_SOCKET` (a path, or an abstract socket written with a leading `@`). Without the
variable every call is a no-op, so the same code runs under systemd and in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def format_notification(fields: Mapping[str, str | int]) -> bytes:
    lines = []
    for key, value in fields.items():
        text = str(value)
        if "\n" in text or "=" in key or "\n" in key:
            raise ValueError(f"notification field {key!r} may not contain newlines")
        lines.append(f"{key}={text}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def socket_address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """Half of `$WATCHDOG_USEC` when the watchdog is meant for this process, else None."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return int(usec) / 1_000_000 / 2


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        target = environ.get("NOTIFY_SOCKET", "")
        self._address = socket_address(target) if target else None
        self._socket: socket.socket | None = None
        if self._address is not None:
            # Non-blocking: a notify socket nobody reads must never stall the event loop.
            self._socket = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, **fields: str | int) -> None:
        """Send one message; a failure is logged, never raised (systemd may be gone, or
        its queue full: then the message is dropped, as a later one will say more)."""
        if self._socket is None:
            return
        try:
            self._socket.sendto(format_notification(fields), self._address)
        except BlockingIOError:
            log.debug("sd_notify queue full; dropped %s", ", ".join(fields))
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self._address, exc)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
