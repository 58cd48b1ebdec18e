"""Two appliances whose bus endpoints are linked: a client on one reaches the other.

Box A listens; box B dials it (`bus.links`, with A's admin token). Checked: a client on
B calls a service served on A (and the reverse), publishes cross in both directions
exactly once, a queue group spanning both boxes gets each message once, a request for a
node behind the link arrives with the relayed head, and the refusals: a link to itself,
a second link to the same endpoint (a loop), a token that may not link.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from appliance.bus import messages as m
from appliance.bus.client import open_client
from tests.bus.test_endpoint import WAIT, RawPeer, bus_endpoints
from tests.conftest import ApplianceProcess


def _health(process) -> dict:
    return httpx.get(f"{process.url}/api/v1/health", timeout=WAIT).json()


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    base = tmp_path_factory.mktemp("links")
    box_a = ApplianceProcess(base / "a", env={"APPLIANCE_DEVICE_NAME": "box-a"})
    box_a.wait_ready()
    _, a_tcp = bus_endpoints(box_a)
    box_b = ApplianceProcess(
        base / "b",
        env={
            "APPLIANCE_DEVICE_NAME": "box-b",
            # The link's own token in its URL (bus.link_token is the default for others).
            "APPLIANCE_BUS_LINKS": a_tcp.replace("tcp://", f"tcp://{box_a.token}@"),
        },
    )
    box_b.wait_ready()
    try:
        yield box_a, box_b
    finally:
        box_b.stop()
        box_a.stop()


async def _until_linked(box) -> None:
    with trio.fail_after(WAIT * 2):
        while ": connected" not in _health(box)["components"]["bus"]["detail"]:  # noqa: ASYNC110
            await trio.sleep(0.1)


async def _settle(*clients) -> None:
    """Subscriptions travel over the link asynchronously: a round trip on each box's
    connection, then one over the link (a query is answered after what came before)."""
    for client in clients:
        await client.query("")
    await trio.sleep(0.3)


async def test_a_client_on_one_box_calls_a_service_on_the_other(linked):
    box_a, box_b = linked
    await _until_linked(box_b)
    a_unix, _ = bus_endpoints(box_a)
    b_unix, _ = bus_endpoints(box_b)

    async def echo(request):
        return b"A says: " + request.data

    async with (
        open_client(a_unix, box_a.token, name="echo-on-a") as server,
        open_client(b_unix, box_b.token, name="caller-on-b") as caller,
    ):
        await server.serve("echo", echo)
        await _settle(server, caller)
        with trio.fail_after(WAIT):
            assert await caller.request("svc.echo", b"hi", timeout=5) == b"A says: hi"


async def test_publishes_cross_the_link_both_ways_exactly_once(linked):
    box_a, box_b = linked
    await _until_linked(box_b)
    a_unix, _ = bus_endpoints(box_a)
    b_unix, _ = bus_endpoints(box_b)
    async with (
        open_client(a_unix, box_a.token, name="node-a") as on_a,
        open_client(b_unix, box_b.token, name="node-b") as on_b,
    ):
        sub_a = await on_a.subscribe("plant.>")
        sub_b = await on_b.subscribe("plant.>")
        sub_b_narrow = await on_b.subscribe("plant.*.temp")
        await _settle(on_a, on_b)
        await on_b.publish("plant.l1.temp", b"from-b")
        await on_a.publish("plant.l2.temp", b"from-a")
        with trio.fail_after(WAIT):
            got_a = sorted([(await sub_a.__anext__()).data for _ in range(2)])
            got_b = sorted([(await sub_b.__anext__()).data for _ in range(2)])
            got_narrow = sorted([(await sub_b_narrow.__anext__()).data for _ in range(2)])
        assert got_a == got_b == got_narrow == [b"from-a", b"from-b"]
        # Nothing more arrives: each subscription had each message exactly once.
        await on_a.publish("plant.end.temp", b"end")
        with trio.fail_after(WAIT):
            assert (await sub_b.__anext__()).data == b"end"
            assert (await sub_b_narrow.__anext__()).data == b"end"
            assert (await sub_a.__anext__()).data == b"end"


async def test_a_queue_group_spanning_both_boxes_gets_each_message_once(linked):
    box_a, box_b = linked
    await _until_linked(box_b)
    a_unix, _ = bus_endpoints(box_a)
    b_unix, _ = bus_endpoints(box_b)
    async with (
        open_client(a_unix, box_a.token, name="worker-a") as worker_a,
        open_client(b_unix, box_b.token, name="worker-b") as worker_b,
        open_client(b_unix, box_b.token, name="producer-b") as producer,
    ):
        group_a = await worker_a.subscribe("jobs.*", group="workers")
        group_b = await worker_b.subscribe("jobs.*", group="workers")
        await _settle(worker_a, worker_b, producer)
        for i in range(20):
            await producer.publish(f"jobs.j{i}", str(i).encode())
        seen: list[bytes] = []

        async def drain(sub) -> None:
            async for message in sub:
                seen.append(message.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, group_a)
            nursery.start_soon(drain, group_b)
            with trio.move_on_after(2.0):  # collect whatever arrives; then count
                while len(seen) < 20:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            await trio.sleep(0.3)  # a duplicate would arrive in this time
            nursery.cancel_scope.cancel()
        assert sorted(seen, key=int) == [str(i).encode() for i in range(20)]


async def test_a_request_for_a_node_behind_the_link_carries_the_relayed_head(linked):
    box_a, box_b = linked
    await _until_linked(box_b)
    a_unix, _ = bus_endpoints(box_a)
    b_unix, _ = bus_endpoints(box_b)
    heads = []

    async def whoami(request):
        heads.append(request.source)
        return b"ok"

    async with (
        open_client(a_unix, box_a.token, name="target-a") as target,
        open_client(b_unix, box_b.token, name="asker-b") as asker,
    ):
        await target.serve("whoami", whoami)
        await _settle(target, asker)
        with trio.fail_after(WAIT):
            assert await asker.request("svc.whoami", timeout=5) == b"ok"
        assert heads == ["asker-b"]  # the caller's name survives the hop


async def test_a_second_link_to_the_same_endpoint_is_refused_as_a_loop(linked):
    box_a, box_b = linked
    await _until_linked(box_b)
    _, a_tcp = bus_endpoints(box_a)
    host, port = a_tcp.removeprefix("tcp://").rsplit(":", 1)
    peer = RawPeer(await trio.open_tcp_stream(host, int(port)))
    hello = peer.conn.hello(box_a.token, node=m.NodeRecord(name="box-b"), link=True)
    await peer.stream.send_all(hello)  # box-b is linked to box-a already
    closed = await peer.closed()
    assert (closed.reason, "box-b" in closed.text) == ("link_refused", True)
    detail = _health(box_b)["components"]["bus"]["detail"]
    assert "link tcp://" in detail and box_a.token not in detail  # the token never shows
    assert ": connected" in _health(box_b)["components"]["bus"]["detail"]  # the first stays


async def test_links_to_itself_or_with_a_viewer_token_are_refused(linked):
    box_a, _ = linked
    a_unix, _ = bus_endpoints(box_a)
    peer = await RawPeer.open(a_unix)
    hello = peer.conn.hello(box_a.token, node=m.NodeRecord(name="box-a"), link=True)
    await peer.stream.send_all(hello)
    assert (await peer.closed()).reason == "link_refused"

    viewer = httpx.post(  # noqa: ASYNC210 - a test's one setup call
        f"{box_a.url}/api/v1/auth/tokens",
        json={"name": "looker", "role": "viewer"},
        headers={"Authorization": f"Bearer {box_a.token}"},
        timeout=WAIT,
    ).json()["token"]
    peer = await RawPeer.open(a_unix)
    await peer.stream.send_all(peer.conn.hello(viewer, node=m.NodeRecord(name="x"), link=True))
    assert (await peer.closed()).reason == "forbidden"


async def test_a_link_to_an_unreachable_endpoint_is_reported_and_retried(tmp_path):
    box = ApplianceProcess(
        tmp_path / "lonely",
        env={"APPLIANCE_BUS_LINKS": "tcp://127.0.0.1:9", "APPLIANCE_BUS_LINK_TOKEN": "x"},
    )
    box.wait_ready()
    try:
        bus = _health(box)["components"]["bus"]
        with trio.fail_after(WAIT):
            while "unreachable" not in bus["detail"]:
                await trio.sleep(0.1)
                bus = _health(box)["components"]["bus"]
        assert "link tcp://127.0.0.1:9: unreachable" in bus["detail"]
        assert bus["status"] == "ok"  # the box serves its own clients all the same
    finally:
        box.stop()
