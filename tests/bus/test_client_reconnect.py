"""The client's reconnect: against the real appliance killed and restarted on the same data
dir (so the same Unix socket path), and its backoff on a virtual clock.

A subscriber, a service and a publisher with `reconnect` carry on across a restart: the
request pending at the drop fails with ConnectionClosed, a publish made while the
appliance is down waits for the reconnection, the first message after it says
`reconnected`, and the service answers again. A client whose token was revoked is refused
at its reconnection and stops (final); one whose endpoint stays away gives up after
`max_attempts`. On a virtual clock, with a fake endpoint over a memory stream: the exact
times of the attempts (0.2 s doubling to 10 s) and a publish that waits `policy.wait`.
"""

from __future__ import annotations

import random
import signal

import httpx
import pytest
import trio
import trio.testing

from appliance.bus import messages as m
from appliance.bus.client import BusClient, ConnectionClosed, open_client
from appliance.bus.client_reconnect import RETRY_REASONS, ReconnectPolicy, retryable
from appliance.bus.connection import Connection, State
from appliance.bus.principal import BusPrincipal
from appliance.bus.reasons import REASONS
from tests.bus.test_endpoint import WAIT, _settle, bus_endpoints
from tests.conftest import ApplianceProcess

FAST = ReconnectPolicy(first=0.05, max=0.5, wait=WAIT * 6)  # a restart takes a few seconds


async def _until(predicate, what: str) -> None:
    with trio.fail_after(WAIT * 3):
        while not predicate():  # noqa: ASYNC110 - a counter the client's tasks move
            await trio.sleep(0.02)


# --- real processes ----------------------------------------------------------------------


async def test_a_subscriber_and_a_service_carry_on_after_the_appliance_restarts(
    start_appliance, tmp_path
):
    data_dir = tmp_path / "data"
    first = start_appliance(data_dir)
    unix, _ = bus_endpoints(first)
    token = first.token
    slow_called = trio.Event()

    async def echo(request) -> bytes:
        return b"echo:" + request.data

    async def slow(request) -> bytes:
        slow_called.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with (
        open_client(unix, token, name="rc-sub", reconnect=FAST) as subscriber,
        open_client(unix, token, name="rc-svc", reconnect=FAST) as service,
        open_client(unix, token, name="rc-pub", reconnect=FAST) as publisher,
    ):
        sub = await subscriber.subscribe("plant.>")
        await service.serve("echo", echo)
        await service.serve("slow", slow)
        await _settle(subscriber)
        await _settle(service)
        await publisher.publish("plant.a", b"before")
        with trio.fail_after(WAIT):
            before = await sub.__anext__()
        assert (before.data, before.reconnected) == (b"before", False)
        assert await publisher.request("svc.echo", b"1", timeout=WAIT) == b"echo:1"

        # A request pending when the appliance dies fails with ConnectionClosed.
        failed: list[ConnectionClosed] = []

        async def call_slow() -> None:
            with pytest.raises(ConnectionClosed) as raised:
                await publisher.request("svc.slow", timeout=WAIT * 6)
            failed.append(raised.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_slow)
            with trio.fail_after(WAIT):
                await slow_called.wait()
            first.proc.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(first.proc.wait, WAIT)
        assert [e.reason for e in failed] == ["going_away"]
        assert not publisher.connected

        # A publish while it is down waits for the reconnection.
        published = trio.Event()

        async def publish_while_down() -> None:
            await publisher.publish("plant.down", b"while-down")
            published.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_while_down)
            await trio.testing.wait_all_tasks_blocked(cushion=0.1)  # between two attempts
            assert not published.is_set()
            await trio.to_thread.run_sync(start_appliance, data_dir)
            with trio.fail_after(WAIT * 3):
                await published.wait()

        with trio.fail_after(WAIT * 3):
            for client in (subscriber, service, publisher):
                await client.wait_connected()
        await _settle(subscriber)  # its subscription is restored
        await publisher.publish("plant.a", b"after")
        got = []
        with trio.fail_after(WAIT):
            while not got or got[-1].data != b"after":
                got.append(await sub.__anext__())
        # "while-down" arrives too if the subscriber was back before the publisher.
        assert [g.data for g in got] in ([b"after"], [b"while-down", b"after"])
        assert [g.reconnected for g in got] == [True] + [False] * (len(got) - 1)
        await publisher.publish("plant.a", b"again")
        with trio.fail_after(WAIT):
            again = await sub.__anext__()
        assert (again.data, again.reconnected, again.source) == (b"again", False, "rc-pub")
        assert await publisher.request("svc.echo", b"2", timeout=WAIT) == b"echo:2"
        for client in (subscriber, service, publisher):
            assert (client.reconnects, client.closed) == (1, None)
            assert client.reconnect_attempts >= 1
        names = {node.name for node in await publisher.query("")}
        assert {"rc-sub", "rc-svc", "rc-pub"} <= names  # the hellos named them again


async def test_a_going_away_close_is_retried(start_appliance, tmp_path):
    data_dir = tmp_path / "data"
    first = start_appliance(data_dir)
    unix, _ = bus_endpoints(first)
    async with open_client(unix, first.token, name="rc-term", reconnect=FAST) as client:
        sub = await client.subscribe("term.>", policy="latest")
        first.proc.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(first.proc.wait, WAIT * 3) == 0
        with trio.fail_after(WAIT):
            why = await client.wait_disconnected()
        assert why.reason == "going_away" and client.closed is None
        second = await trio.to_thread.run_sync(start_appliance, data_dir)
        with trio.fail_after(WAIT * 3):
            await client.wait_connected()
        await _settle(client)
        async with open_client(unix, second.token, name="rc-term-pub") as publisher:
            await publisher.publish("term.x", b"1", retain=True)
        with trio.fail_after(WAIT):
            message = await sub.__anext__()
        assert (message.topic, message.data, message.reconnected) == ("term.x", b"1", True)
        assert client.reconnects == 1


async def test_the_backoff_is_bounded_and_gives_up_after_max_attempts(start_appliance):
    process = start_appliance()
    unix, _ = bus_endpoints(process)
    policy = ReconnectPolicy(first=0.02, max=0.1, max_attempts=4, wait=0.0)
    async with trio.open_nursery() as nursery:
        client = await BusClient.connect(
            nursery, unix, process.token, name="rc-gives-up", reconnect=policy
        )
        sub = await client.subscribe("anything")
        await trio.to_thread.run_sync(process.stop)  # SIGTERM: the socket file goes too
        with trio.fail_after(WAIT):
            closed = await client.wait_closed()
        assert closed.reason == "going_away"
        assert closed.text.startswith("gave up reconnecting after 4 attempts: cannot reconnect")
        assert (client.reconnect_attempts, client.reconnects) == (4, 0)
        with pytest.raises(ConnectionClosed) as ended, trio.fail_after(WAIT):
            async for _ in sub:
                pass
        assert ended.value is closed
        with pytest.raises(ConnectionClosed):
            await client.publish("anything", b"x")


@pytest.fixture(scope="module")
def liveness_appliance(tmp_path_factory):
    """Connections silent for 1 s are closed (`ping_timeout`): clients here ping every 15."""
    process = ApplianceProcess(
        tmp_path_factory.mktemp("liveness") / "data", env={"APPLIANCE_BUS_PING_TIMEOUT_S": "1"}
    )
    process.wait_ready()
    yield process
    process.stop()


async def test_ping_timeout_is_retried_and_a_revoked_token_is_final(liveness_appliance):
    unix, _ = bus_endpoints(liveness_appliance)
    admin = {"Authorization": f"Bearer {liveness_appliance.token}"}

    def http(method: str, path: str, **kwargs) -> dict:
        response = httpx.request(
            method, f"{liveness_appliance.url}{path}", headers=admin, timeout=WAIT, **kwargs
        )
        assert response.status_code in (200, 201), response.text
        return response.json()

    made = await trio.to_thread.run_sync(
        lambda: http("POST", "/api/v1/auth/tokens", json={"name": "rc-doomed", "role": "operator"})
    )
    async with (
        open_client(unix, liveness_appliance.token, name="rc-steady", reconnect=FAST) as steady,
        open_client(unix, made["token"], name="rc-doomed", reconnect=FAST) as doomed,
    ):
        await trio.to_thread.run_sync(http, "DELETE", f"/api/v1/auth/tokens/{made['id']}")
        with trio.fail_after(WAIT * 3):
            closed = await doomed.wait_closed()
        assert closed.reason == "unauthenticated"
        # Every attempt but the refused one got back in: the refusal was not retried.
        assert doomed.reconnect_attempts == doomed.reconnects + 1
        await _until(lambda: steady.reconnects >= 1, "the steady client to reconnect")
        assert steady.disconnected is not None
        assert steady.disconnected.reason == "ping_timeout"
        assert steady.closed is None


# --- the policy, without I/O ---------------------------------------------------------------


def test_which_close_reasons_are_retried() -> None:
    names = {reason.name for reason in REASONS}
    assert RETRY_REASONS.issubset(names)
    for final in ("unauthenticated", "forbidden", "no_common_version", "name_taken", "normal"):
        assert not retryable(final)
    for again in ("going_away", "ping_timeout", "slow_consumer", "truncated"):
        assert retryable(again)


def test_the_delays_double_from_first_to_max_with_jitter_below() -> None:
    policy = ReconnectPolicy(max_attempts=10, rng=random.Random(5))
    bounds = [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0, 10.0]
    delays = list(policy.delays())
    assert len(delays) == 10
    for delay, bound in zip(delays, bounds, strict=True):
        assert bound * 0.5 <= delay <= bound
    exact = ReconnectPolicy(first=1.0, max=3.0, jitter=0.0, max_attempts=4)
    assert list(exact.delays()) == [1.0, 2.0, 3.0, 3.0]
    forever = ReconnectPolicy().delays()
    assert len([next(forever) for _ in range(1000)]) == 1000  # no max_attempts: no end


@pytest.mark.parametrize(
    "options",
    [{"first": 0}, {"first": 2.0, "max": 1.0}, {"jitter": 1.0}, {"max_attempts": 0}],
)
def test_a_policy_that_makes_no_sense_is_refused(options) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**options)


# --- the backoff on a virtual clock --------------------------------------------------------


async def _fake_endpoint(stream: trio.abc.Stream, hang_up: trio.Event) -> None:
    """Welcome one hello, then hang up when told."""
    conn = Connection(
        "server",
        authenticate=lambda token: BusPrincipal.for_role("fake", "admin"),
        node=m.NodeRecord(name="fake"),
    )
    while conn.state is State.HELLO:
        conn.receive_data(await stream.receive_some(65536))
    await stream.send_all(conn.data_to_send())
    await hang_up.wait()
    await stream.aclose()


async def test_attempt_times_and_a_publish_that_waits_on_a_virtual_clock(autojump_clock):
    policy = ReconnectPolicy(first=0.2, max=10.0, jitter=0.0, max_attempts=9, wait=5.0)
    attempts: list[float] = []

    async def redial() -> trio.abc.Stream:
        attempts.append(trio.current_time())
        raise ConnectionRefusedError("the endpoint is down")

    ours, theirs = trio.testing.memory_stream_pair()
    hang_up = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_fake_endpoint, theirs, hang_up)
        client = await BusClient.over(
            nursery, ours, "t", name="virtual", reconnect=policy, redial=redial
        )
        assert client.connected
        hang_up.set()
        assert (await client.wait_disconnected()).text == "hung up"
        dropped = trio.current_time()
        with pytest.raises(ConnectionClosed) as waited:
            await client.publish("a.b", b"x")
        assert trio.current_time() - dropped == pytest.approx(5.0)
        assert waited.value.text.startswith("not reconnected within 5 s")
        closed = await client.wait_closed()
    assert [round(t - dropped, 6) for t in attempts] == [
        0.2, 0.6, 1.4, 3.0, 6.2, 12.6, 22.6, 32.6, 42.6
    ]  # fmt: skip
    assert closed.text.startswith("gave up reconnecting after 9 attempts")
    assert (client.reconnect_attempts, client.reconnects) == (9, 0)
