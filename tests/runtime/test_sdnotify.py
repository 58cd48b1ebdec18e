"""sd_notify: the message format, path and abstract sockets, the watchdog interval."""

import os
import socket

import pytest

from appliance.runtime.sdnotify import Notifier, format_notification, watchdog_interval_s


def test_format():
    assert format_notification({"READY": 1, "STATUS": "serving"}) == b"READY=1\nSTATUS=serving\n"
    with pytest.raises(ValueError):
        format_notification({"STATUS": "two\nlines"})


def receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_path_socket(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        notifier.notify(READY=1, STATUS="up")
        assert receive(sock) == {"READY": "1", "STATUS": "up"}
        notifier.close()


def test_abstract_socket():
    name = f"appliance-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.notify(STOPPING=1)
        assert receive(sock) == {"STOPPING": "1"}
        notifier.close()


def test_without_notify_socket_nothing_happens():
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.notify(READY=1)  # no socket, no error


def test_a_vanished_systemd_is_logged_not_raised(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notifier.notify(WATCHDOG=1)
    assert "sd_notify" in caplog.text


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ, expected):
    assert watchdog_interval_s(environ, 4242) == expected


def test_a_full_notify_queue_never_blocks(tmp_path):
    """Nobody reads the socket: sends beyond its queue are dropped, not waited for."""
    path = tmp_path / "unread"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        for number in range(500):  # far beyond net.unix.max_dgram_qlen
            notifier.notify(STATUS=f"message {number}")
        notifier.close()
        sock.setblocking(False)
        received = 0
        while True:
            try:
                sock.recv(4096)
            except BlockingIOError:
                break
            received += 1
        assert 0 < received < 500
