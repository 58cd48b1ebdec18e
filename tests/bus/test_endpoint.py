"""The bus endpoint in the real process: clients over the Unix socket and TCP.

One appliance serves the module (its bus TCP port is 0, so tests never collide on 7420);
the stop test starts its own. Clients are `appliance.bus.client`; misbehaving peers are
raw sockets speaking through a sans-IO client `Connection`, so the bytes are exactly what
a broken client would send.
"""

from __future__ import annotations

import json
import os
import signal
import stat

import httpx
import pytest
import trio

from appliance.bus import messages as m
from appliance.bus.client import (
    BusClient,
    ConnectionClosed,
    NoResponders,
    RequestTimeout,
    open_client,
)
from appliance.bus.codec import encode_frame
from appliance.bus.connection import Connection
from appliance.bus.events import Closed, Established
from appliance.bus.reasons import reason_for
from tests.conftest import ApplianceProcess

BUS_ARGS = ["--bus-tcp", "127.0.0.1:0"]
WAIT = 10.0  # every wait in these tests is bounded by this


@pytest.fixture(scope="module")
def bus_appliance(tmp_path_factory):
    process = ApplianceProcess(tmp_path_factory.mktemp("bus") / "data", extra_args=BUS_ARGS)
    process.wait_ready()
    yield process
    process.stop()


def bus_endpoints(process) -> tuple[str, str]:
    endpoints = json.loads((process.data_dir / "run" / "endpoints.json").read_text())
    return endpoints["bus_unix"], endpoints["bus_tcp"]


class RawPeer:
    """A socket and a client `Connection`: send any bytes, read what the endpoint says."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection("client")

    @classmethod
    async def open(cls, path: str) -> RawPeer:
        return cls(await trio.open_unix_socket(path))

    async def hello(self, token: str) -> None:
        await self.stream.send_all(self.conn.hello(token))
        assert any(isinstance(e, Established) for e in await self.events())

    async def events(self) -> list:
        with trio.fail_after(WAIT):
            data = await self.stream.receive_some(65536)
        return self.conn.receive_data(data)

    async def closed(self) -> Closed:
        """Read until the endpoint's close (or the end of the stream)."""
        with trio.fail_after(WAIT):
            while True:
                data = await self.stream.receive_some(65536)
                for event in self.conn.receive_data(data):
                    if isinstance(event, Closed):
                        return event


def test_endpoints_and_health(bus_appliance):
    unix, tcp = bus_endpoints(bus_appliance)
    assert unix == str(bus_appliance.data_dir / "run" / "bus.sock")
    assert stat.S_IMODE(os.stat(unix).st_mode) == 0o660
    assert tcp.startswith("tcp://127.0.0.1:") and not tcp.endswith(":0")
    health = httpx.get(f"{bus_appliance.url}/api/v1/health", timeout=WAIT).json()
    assert health["components"]["bus"]["status"] == "ok"


async def test_publish_subscribe_across_unix_and_tcp(bus_appliance):
    unix, tcp = bus_endpoints(bus_appliance)
    token = bus_appliance.token
    async with (
        open_client(unix, token, name="sub-unix") as subscriber,
        open_client(tcp, token, name="pub-tcp") as publisher,
    ):
        sub = await subscriber.subscribe("plant.*.temp")
        await _settle(subscriber)
        await publisher.publish("plant.line3.temp", b"21.5", headers={"unit": "C"})
        await publisher.publish("plant.line3.pressure", b"ignored")
        await publisher.publish("plant.line4.temp", b"19.0")
        with trio.fail_after(WAIT):
            first, second = await sub.__anext__(), await sub.__anext__()
        assert (first.topic, first.data, first.headers, first.source) == (
            "plant.line3.temp",
            b"21.5",
            {"unit": "C"},
            "pub-tcp",
        )
        assert (second.topic, second.data, second.gap) == ("plant.line4.temp", b"19.0", 0)


async def test_queue_group_gives_each_message_to_one_member(bus_appliance):
    unix, _ = bus_endpoints(bus_appliance)
    token = bus_appliance.token
    async with (
        open_client(unix, token, name="worker-a") as a,
        open_client(unix, token, name="worker-b") as b,
        open_client(unix, token, name="producer") as producer,
    ):
        subs = [
            await a.subscribe("jobs.>", group="workers"),
            await b.subscribe("jobs.>", group="workers"),
        ]
        await _settle(a)
        await _settle(b)
        for i in range(20):
            await producer.publish(f"jobs.n{i}", str(i).encode())
        got: list[list[bytes]] = [[], []]

        async def collect(index: int) -> None:
            with trio.move_on_after(1.0):  # quiet for a second: everything has arrived
                async for message in subs[index]:
                    got[index].append(message.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, 0)
            nursery.start_soon(collect, 1)
        everything = sorted(got[0] + got[1], key=int)
        assert everything == [str(i).encode() for i in range(20)]  # each exactly once
        assert got[0] and got[1]  # and both members took turns


async def test_request_reply_and_no_responders(bus_appliance):
    unix, tcp = bus_endpoints(bus_appliance)
    token = bus_appliance.token

    async def echo(request):
        if request.data == b"fail":
            raise ValueError("asked to fail")
        return request.topic.encode() + b":" + request.data

    async with (
        open_client(unix, token, name="echo-server") as server,
        open_client(tcp, token, name="caller") as caller,
    ):
        await server.serve("echo", echo)
        await _settle(server)
        assert await caller.request("svc.echo", b"hi", timeout=5) == b"svc.echo:hi"
        assert await caller.request("svc.echo.upper", b"x", timeout=5) == b"svc.echo.upper:x"
        with pytest.raises(Exception, match="asked to fail"):
            await caller.request("svc.echo", b"fail", timeout=5)
        with trio.fail_after(2.0):  # answered at once, not at the deadline
            with pytest.raises(NoResponders):
                await caller.request("svc.nobody", b"", timeout=30)


async def test_a_late_responder_gives_the_caller_a_timeout(bus_appliance):
    unix, _ = bus_endpoints(bus_appliance)
    token = bus_appliance.token

    async def slow(request):
        await trio.sleep(WAIT)
        return b"too late"

    async with (
        open_client(unix, token, name="slow-server") as server,
        open_client(unix, token, name="impatient") as caller,
    ):
        await server.serve("slow", slow)
        await _settle(server)
        started = trio.current_time()
        with pytest.raises(RequestTimeout, match="timeout"):
            await caller.request("svc.slow", timeout=0.5)
        assert 0.5 <= trio.current_time() - started < 2.0  # the endpoint's timeout reply


async def test_a_bad_frame_closes_only_its_connection(bus_appliance):
    unix, _ = bus_endpoints(bus_appliance)
    token = bus_appliance.token
    async with open_client(unix, token, name="bystander") as bystander:
        sub = await bystander.subscribe("still.working")
        bad = await RawPeer.open(unix)
        await bad.hello(token)
        await bad.stream.send_all(b"\x07\x01\x00\x00\x00\x00\x00")  # version 7
        closed = await bad.closed()
        assert (closed.code, closed.reason, closed.by_peer) == (
            reason_for("bad_version").code,
            "bad_version",
            True,
        )
        await bad.stream.aclose()
        await bystander.publish("still.working", b"yes")
        with trio.fail_after(WAIT):
            assert (await sub.__anext__()).data == b"yes"


async def test_a_message_before_hello_is_refused(bus_appliance):
    unix, _ = bus_endpoints(bus_appliance)
    peer = await RawPeer.open(unix)
    publish = m.Message(m.Publish(topic="too.early", data=b"x"))
    await peer.stream.send_all(encode_frame(publish.to_wire()))
    closed = await peer.closed()
    assert (closed.reason, closed.text) == ("hello_required", "publish before hello")
    await peer.stream.aclose()


async def test_a_bad_token_is_refused(bus_appliance):
    unix, _ = bus_endpoints(bus_appliance)
    with pytest.raises(ConnectionClosed) as refused:
        async with open_client(unix, "apl_000000000000_nope"):
            pass
    assert refused.value.reason == "unauthenticated"


async def test_sigterm_closes_connections_and_exits_0(start_appliance):
    process = start_appliance(extra_args=BUS_ARGS)
    unix, tcp = bus_endpoints(process)
    async with trio.open_nursery() as nursery:
        client = await BusClient.connect(nursery, tcp, process.token, name="stays")
        sub = await client.subscribe("anything")
        await _settle(client)
        process.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT), pytest.raises(ConnectionClosed) as closed:
            async for _ in sub:
                pass
        assert closed.value.reason == "going_away"
        assert closed.value.code == reason_for("going_away").code
    assert await trio.to_thread.run_sync(process.proc.wait, 30) == 0
    assert not await trio.Path(unix).exists()  # the socket file is removed on stop


async def _settle(client: BusClient) -> None:
    """Wait until the endpoint has handled what `client` sent (a request to nobody is
    answered after everything before it on the connection)."""
    with pytest.raises(NoResponders), trio.fail_after(WAIT):
        await client.request("svc.settle-nobody", timeout=5)
