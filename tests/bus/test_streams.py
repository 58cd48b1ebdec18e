"""Streams between clients through the real endpoint's relays.

A stream larger than its window; refusals; a receiver killed mid-stream that reconnects
and gets the rest from the acknowledged offset (nothing lost, at most the chunk it was
processing again, which it writes at its offset); a receiver that never comes back
(`stream_expired`); a sender that vanishes (`sender_gone`); liveness (`ping_timeout`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import trio

import appliance.bus.client as client_module
from appliance.bus import messages as m
from appliance.bus.client import open_client
from appliance.bus.client_streams import StreamReset, StreamStopped
from tests.bus.test_endpoint import WAIT, RawPeer, bus_endpoints
from tests.conftest import ApplianceProcess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def streams_appliance(tmp_path_factory):
    process = ApplianceProcess(
        tmp_path_factory.mktemp("streams") / "data",
        env={"APPLIANCE_BUS_STREAM_KEEP_S": "1.5", "APPLIANCE_BUS_PING_TIMEOUT_S": "3"},
    )
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture
def fast_pings(monkeypatch):
    """Clients here ping well within the endpoint's 3 s liveness interval."""
    monkeypatch.setattr(client_module, "PING_INTERVAL", 0.5)


async def test_a_stream_larger_than_its_window_arrives_whole_and_in_order(
    streams_appliance, fast_pings
):
    unix, tcp = bus_endpoints(streams_appliance)
    token = streams_appliance.token
    data = os.urandom(1 << 20)  # 16 windows of 64 KiB
    async with (
        open_client(unix, token, name="sink-a") as receiver,
        open_client(tcp, token, name="source-a") as sender,
    ):
        writer = await sender.open_stream("sink-a")
        received = bytearray()
        offsets = []

        async def receive() -> None:
            reader = await receiver.accept_stream()
            assert (reader.source, reader.start_offset) == ("source-a", 0)
            async for chunk in reader:
                offsets.append(chunk.offset)
                assert chunk.offset == len(received)
                received.extend(chunk.data)

        with trio.fail_after(WAIT * 3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await writer.send(data)
                await writer.finish()
        assert bytes(received) == data
        assert len(offsets) > 16  # it came in many pieces, each acknowledged on


async def test_a_stream_to_a_node_that_is_not_connected_is_stopped(streams_appliance, fast_pings):
    unix, _ = bus_endpoints(streams_appliance)
    async with open_client(unix, streams_appliance.token, name="source-b") as sender:
        writer = await sender.open_stream("nobody-here")
        await writer.send(b"hello")
        with pytest.raises(StreamStopped) as stopped, trio.fail_after(WAIT):
            await writer.finish()
        assert stopped.value.reason == "no_destination"
        assert "nobody-here" in stopped.value.text
        # The connection carries on.
        assert await sender.query("") is not None


async def test_a_receiver_that_never_comes_back_expires_the_stream(streams_appliance, fast_pings):
    unix, _ = bus_endpoints(streams_appliance)
    token = streams_appliance.token
    async with open_client(unix, token, name="source-c") as sender:
        async with open_client(unix, token, name="sink-c") as receiver:
            writer = await sender.open_stream("sink-c")
            await writer.send(b"x" * 1000)
            with trio.fail_after(WAIT):
                reader = await receiver.accept_stream()
                chunk = await reader.receive()
            assert chunk is not None and chunk.data == b"x" * 1000
        # sink-c is gone without acknowledging; 1.5 s later the endpoint gives up.
        started = time.monotonic()
        with pytest.raises(StreamStopped) as stopped, trio.fail_after(WAIT):
            await writer.finish(timeout=WAIT)
        assert stopped.value.reason == "stream_expired"
        assert time.monotonic() - started >= 1.0  # it waited for the receiver first


async def test_a_sender_that_vanishes_resets_the_stream_after_its_data(
    streams_appliance, fast_pings
):
    unix, _ = bus_endpoints(streams_appliance)
    token = streams_appliance.token
    async with open_client(unix, token, name="sink-d") as receiver:
        async with open_client(unix, token, name="source-d") as sender:
            writer = await sender.open_stream("sink-d")
            await writer.send(b"partial data")
            with trio.fail_after(WAIT):
                reader = await receiver.accept_stream()
        received = b""
        with pytest.raises(StreamReset) as reset, trio.fail_after(WAIT):
            async for chunk in reader:
                received += chunk.data
        assert received == b"partial data"
        assert reset.value.reason == "sender_gone"


async def test_a_silent_connection_is_closed_with_ping_timeout(streams_appliance):
    unix, _ = bus_endpoints(streams_appliance)
    peer = await RawPeer.open(unix)
    await peer.hello(streams_appliance.token)
    closed = await peer.closed()  # nothing sent after the hello: 3 s later, closed
    assert closed.reason == "ping_timeout"


def _log_lines(path) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def _start_receiver(bus: str, token: str, out, log) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.bus.stream_receiver", bus, token, "sink-k", out, log]
    return subprocess.Popen(args, cwd=REPO)


def _chunks(lines: list[list[str]]) -> list[tuple[int, int]]:
    return [(int(line[1]), int(line[2])) for line in lines if line[0] == "chunk"]


async def _wait_for(predicate, what: str) -> None:
    with trio.fail_after(WAIT * 3):
        while not predicate():  # noqa: ASYNC110 - polling files another process writes
            await trio.sleep(0.02)


async def test_a_killed_receiver_resumes_from_the_acknowledged_offset(
    streams_appliance, fast_pings, tmp_path
):
    unix, _ = bus_endpoints(streams_appliance)
    token = streams_appliance.token
    data = os.urandom(2 << 20)
    out = tmp_path / "received.bin"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _start_receiver(unix, token, out, first_log)
    second = None
    try:
        async with open_client(unix, token, name="source-k") as sender:
            writer = None
            with trio.fail_after(WAIT * 3):  # until the receiver process is connected
                while writer is None:
                    if any(n.name == "sink-k" for n in await sender.query("")):
                        writer = await sender.open_stream("sink-k")
                    else:
                        await trio.sleep(0.05)
            finished = trio.Event()

            async def send() -> None:
                await writer.send(data, timeout=WAIT * 3)
                await writer.finish(timeout=WAIT * 3)
                finished.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await _wait_for(
                    lambda: sum(n for _, n in _chunks(_log_lines(first_log))) >= 300_000,
                    "the first receiver to get 300 kB",
                )
                first.send_signal(signal.SIGKILL)
                first.wait(WAIT)
                second = _start_receiver(unix, token, out, second_log)
                with trio.fail_after(WAIT * 3):
                    await finished.wait()
                await _wait_for(lambda: second.poll() is not None, "the second receiver")
        assert second.returncode == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(WAIT)

    assert out.read_bytes() == data  # nothing lost
    before, after = _log_lines(first_log), _log_lines(second_log)
    assert before[0] == ["start", "0"] and before[-1][0] == "chunk"
    done = _chunks(before)
    assert [offset for offset, _ in done] == [sum(n for _, n in done[:i]) for i in range(len(done))]
    resumed_at = int(after[0][1])
    assert after[0][0] == "start" and after[-1] == ["end"]
    # The first receiver had released every chunk before the one it was processing, so
    # the stream resumes at most one chunk back, and never past what it processed.
    last_offset, last_length = done[-1]
    assert last_offset <= resumed_at <= last_offset + last_length
    resumed = _chunks(after)
    assert resumed[0][0] == resumed_at
    assert sum(n for _, n in resumed) == len(data) - resumed_at  # nothing delivered twice


async def test_a_pending_request_does_not_hold_back_the_liveness_check(
    streams_appliance, fast_pings
):
    unix, _ = bus_endpoints(streams_appliance)
    token = streams_appliance.token
    responder = await RawPeer.open(unix)
    await responder.hello(token)
    await responder.stream.send_all(
        responder.conn.send(m.Subscribe(sid=1, pattern="svc.silent", group="g"))
    )
    async with open_client(unix, token, name="asker-l") as asker:
        await asker.query("")  # the subscription is in place once this is answered

        async def ask() -> None:
            with pytest.raises(Exception):  # noqa: B017 - whatever ends it, it must end
                await asker.request("svc.silent", b"?", timeout=40)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            # The responder got a request due in 40 s and says nothing more: it is closed
            # for silence after 3 s, not after the request's deadline.
            closed = await responder.closed()
            nursery.cancel_scope.cancel()
    assert closed.reason == "ping_timeout"
