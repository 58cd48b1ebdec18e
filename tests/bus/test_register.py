"""`register` and `deregister` in the real process: naming a connection after its hello.

A client that said hello without a name registers one and discovery (`query`, the peers
API with a selector) and the head of what it publishes show it at once; registering again
relabels it or renames it (the old name is free); a name another connection holds closes
the registering connection with `name_taken`; `deregister` gives the name up; and a stream
relay waiting for its destination resumes on a connection that registers that name.
"""

from __future__ import annotations

import os

import httpx
import pytest
import trio

from appliance.bus.client import BusClient, open_client
from tests.bus.test_endpoint import WAIT, _settle, bus_endpoints
from tests.conftest import ApplianceProcess


@pytest.fixture(scope="module")
def register_appliance(tmp_path_factory):
    process = ApplianceProcess(tmp_path_factory.mktemp("register") / "data")
    process.wait_ready()
    yield process
    process.stop()


async def _names(client: BusClient, selector: str = "") -> dict[str, dict[str, str]]:
    return {node.name: node.labels for node in await client.query(selector)}


async def _peers(process: ApplianceProcess, selector: str) -> list[str | None]:
    def get() -> httpx.Response:
        return httpx.get(
            f"{process.url}/api/v1/bus/peers",
            params={"selector": selector},
            headers={"Authorization": f"Bearer {process.token}"},
            timeout=WAIT,
        )

    response = await trio.to_thread.run_sync(get)
    assert response.status_code == 200, response.text
    return [(c["node"] or {}).get("name") for c in response.json()["connections"]]


async def test_an_unnamed_client_registers_and_is_found_at_once(register_appliance):
    unix, _ = bus_endpoints(register_appliance)
    token = register_appliance.token
    async with open_client(unix, token) as late, open_client(unix, token, name="reg-w") as watcher:
        sub = await watcher.subscribe("reg.late.>")
        await _settle(watcher)
        await late.publish("reg.late.x", b"anonymous")
        await late.register("reg-late", labels={"role": "late"})
        assert late.node is not None and late.node.name == "reg-late"
        assert await _names(late, "role=late") == {"reg-late": {"role": "late"}}
        assert await _peers(register_appliance, "role=late") == ["reg-late"]
        await late.publish("reg.late.x", b"named")
        with trio.fail_after(WAIT):
            first, second = await sub.__anext__(), await sub.__anext__()
        assert (first.data, first.source) == (b"anonymous", None)
        assert (second.data, second.source) == (b"named", "reg-late")


async def test_registering_again_relabels_or_renames_and_frees_the_old_name(register_appliance):
    unix, _ = bus_endpoints(register_appliance)
    token = register_appliance.token
    async with open_client(unix, token, name="reg-a", labels={"x": "1"}) as client:
        await client.register("reg-a", labels={"x": "2"})
        assert await _names(client, "x=1") == {}
        assert await _names(client, "x=2") == {"reg-a": {"x": "2"}}
        await client.register("reg-b", labels={"x": "2"})
        assert await _names(client, "x=2") == {"reg-b": {"x": "2"}}  # one name per connection
        async with open_client(unix, token, name="reg-a") as newcomer:  # not name_taken
            names = await _names(newcomer)
            assert {"reg-a", "reg-b"} <= names.keys()
        assert client.closed is None


async def test_registering_a_name_another_connection_holds_closes_with_name_taken(
    register_appliance,
):
    unix, _ = bus_endpoints(register_appliance)
    token = register_appliance.token
    async with (
        open_client(unix, token, name="reg-held", labels={"who": "holder"}) as holder,
        open_client(unix, token, name="reg-grabber") as grabber,
    ):
        await grabber.register("reg-held", labels={"who": "grabber"})
        with trio.fail_after(WAIT):
            closed = await grabber.wait_closed()
        assert closed.reason == "name_taken" and "reg-held" in closed.text
        assert (await _names(holder, "who"))["reg-held"] == {"who": "holder"}


async def test_deregister_gives_the_name_up(register_appliance):
    unix, _ = bus_endpoints(register_appliance)
    token = register_appliance.token
    async with open_client(unix, token, name="reg-leaving", labels={"k": "v"}) as client:
        await client.deregister()
        assert client.node is None
        assert "reg-leaving" not in await _names(client)
        assert await _peers(register_appliance, "k=v") == []
        async with open_client(unix, token, name="reg-leaving") as successor:
            assert "reg-leaving" in await _names(successor)
        await client.deregister()  # holds none: nothing to say
        assert client.closed is None


async def test_a_stream_waiting_for_its_destination_resumes_on_a_register(register_appliance):
    unix, _ = bus_endpoints(register_appliance)
    token = register_appliance.token
    data = os.urandom(300_000)  # several windows: the relay holds what is not acknowledged
    async with open_client(unix, token, name="reg-source") as sender:
        async with open_client(unix, token, name="reg-sink") as first_sink:
            writer = await sender.open_stream("reg-sink")
            await writer.send(data[:1000])
            with trio.fail_after(WAIT):
                unread = await first_sink.accept_stream()  # it arrived; never read
            assert unread.start_offset == 0
        # The first sink is gone with nothing acknowledged; an unnamed connection takes
        # the name, and the relay sends it the stream from offset 0.
        async with open_client(unix, token) as second_sink, trio.open_nursery() as nursery:

            async def send_the_rest() -> None:
                await writer.send(data[1000:], timeout=WAIT)
                await writer.finish(timeout=WAIT)

            nursery.start_soon(send_the_rest)
            await second_sink.register("reg-sink")
            with trio.fail_after(WAIT):
                reader = await second_sink.accept_stream()
                received = b"".join([chunk.data async for chunk in reader])
            assert (reader.start_offset, reader.source) == (0, "reg-source")
            assert received == data
