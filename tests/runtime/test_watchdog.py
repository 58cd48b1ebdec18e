"""The watchdog pets systemd only while the store is healthy (virtual clock, real socket)."""

import socket

import trio
import trio.testing

from appliance.runtime.main import Runtime, _watchdog
from appliance.runtime.sdnotify import Notifier
from appliance.settings import Settings


class StoreWithHealth:
    """A store stand-in whose health the test controls (the watchdog asks nothing else)."""

    def __init__(self) -> None:
        self.ok = True

    def healthy(self) -> bool:
        return self.ok


def pets(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            count += sock.recv(4096) == b"WATCHDOG=1\n"
        except BlockingIOError:
            return count


async def test_pets_at_the_interval_and_stops_when_the_store_is_sick(tmp_path, autojump_clock):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        runtime = Runtime(Settings(), None, Notifier({"NOTIFY_SOCKET": str(path)}))
        store = StoreWithHealth()
        async with trio.open_nursery() as nursery:
            await nursery.start(_watchdog, runtime, store, 15.0)
            await trio.sleep(15.0 * 4 - 1)  # pets at 0, 15, 30, 45
            assert pets(sock) == 4
            store.ok = False
            await trio.sleep(15.0 * 4)
            assert pets(sock) == 0
            store.ok = True
            await trio.sleep(15.0)
            assert pets(sock) == 1
            nursery.cancel_scope.cancel()
        runtime.notifier.close()
