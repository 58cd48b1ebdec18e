"""Socket activation: the HTTP socket systemd may hand us (`appliance.socket`)."""

from __future__ import annotations

import socket
from collections.abc import Mapping


def listen_fds_http(environ: Mapping[str, str], pid: int) -> int | None:
    """The inherited HTTP socket under socket activation (`LISTEN_FDS`), if there is one."""
    if environ.get("LISTEN_PID") != str(pid) or not environ.get("LISTEN_FDS", "").isdigit():
        return None
    count = int(environ["LISTEN_FDS"])
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    for offset in range(count):
        fd = 3 + offset
        if (names[offset] if offset < len(names) else "") in ("http", ""):
            sock = socket.socket(fileno=fd)
            try:
                if sock.type == socket.SOCK_STREAM:
                    return fd
            finally:
                sock.detach()
    return None
