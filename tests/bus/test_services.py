"""The built-in services on the bus, and per-token bus permissions, in the real process.

One appliance serves the module; clients connect over its Unix socket with
`appliance.bus.client`, and what the bus answers is compared with what HTTP answers for
the same thing. Every wait is bounded by WAIT.
"""

from __future__ import annotations

import json
import secrets

import httpx
import pytest
import trio

from appliance.api.problems import Problem
from appliance.bus.client import (
    BusClient,
    ConnectionClosed,
    NoResponders,
    RequestFailed,
    open_client,
)
from appliance.bus.endpoint import BusEndpoint
from appliance.bus.messages import NodeRecord
from appliance.bus.principal import BusPrincipal
from appliance.bus.services import LONG_KEY_TOPIC, BusServices, config_topic, service_error
from appliance.config.errors import NotFound
from appliance.runtime.health import Health
from tests.api.conftest import create_token
from tests.bus.test_endpoint import bus_endpoints

WAIT = 10.0
KEY = "acme/pump/prod/limits.v2"


@pytest.fixture(scope="module")
def unix(shared_appliance) -> str:
    return bus_endpoints(shared_appliance)[0]


async def call(client: BusClient, topic: str, body: object = None) -> dict:
    """A request with a JSON body (bytes as they are); the reply's JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return json.loads(await client.request(topic, data, timeout=WAIT))


async def refused(client: BusClient, topic: str, body: object) -> str:
    """The error reply's text for a request that must fail."""
    with pytest.raises(RequestFailed) as failure:
        await call(client, topic, body)
    assert failure.value.status == "error"
    return failure.value.text


def http(appliance) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=appliance.url,
        headers={"Authorization": f"Bearer {appliance.token}"},
        timeout=WAIT,
    )


async def put_version(appliance, key: str, content: str) -> dict:
    async with http(appliance) as client:
        response = await client.post(
            f"/api/v1/config/{key}/versions", json={"format": "json", "content": content}
        )
    assert response.status_code == 201, response.text
    return response.json()


async def test_health_over_the_bus_is_the_http_health(shared_appliance, unix):
    async with open_client(unix, shared_appliance.token, name="health-probe") as bus:
        over_bus = await call(bus, "svc.health", b"")
    async with http(shared_appliance) as client:
        over_http = (await client.get("/api/v1/health")).json()
    assert over_bus["status"] == over_http["status"] == "ok"
    assert over_bus["version"] == over_http["version"]
    statuses = {name: c["status"] for name, c in over_http["components"].items()}
    assert {name: c["status"] for name, c in over_bus["components"].items()} == statuses


async def test_config_get_is_the_http_effective_content(shared_appliance, unix):
    created = await put_version(shared_appliance, KEY, '{"rate": 5}')
    async with http(shared_appliance) as client:
        effective = await client.get(f"/api/v1/config/{KEY}")
    async with open_client(unix, shared_appliance.token, name="config-reader") as bus:
        got = await call(bus, "svc.config.get", {"key": KEY})
    assert got == {
        "key": KEY,
        "content": effective.text,
        "format": effective.headers["X-Config-Format"],
        "version": int(effective.headers["X-Config-Version"]),
        "sha256": effective.headers["ETag"].strip('"'),
        "revision": int(effective.headers["X-Config-Revision"]),
    }
    assert (got["content"], got["version"]) == ('{"rate": 5}', created["version"]["number"])


async def test_a_config_change_is_published_on_its_topic(shared_appliance, unix):
    key = "acme/pump/prod/alarms.yaml"
    assert config_topic(key) == "config.changed.acme.pump.prod.alarms:yaml"
    async with open_client(unix, shared_appliance.token, name="config-watcher") as bus:
        one_key = await bus.subscribe(config_topic(key))
        every_key = await bus.subscribe("config.changed.>")
        await _settle(bus)
        created = await put_version(shared_appliance, key, '{"high": 90}')
        expected = {
            "key": key,
            "revision": created["revision"],
            "op": "version",
            "version": created["version"]["number"],
            "sha256": created["version"]["sha256"],
        }
        with trio.fail_after(WAIT):
            message = await one_key.__anext__()
            assert (message.topic, json.loads(message.data)) == (config_topic(key), expected)
            while (message := await every_key.__anext__()).topic != config_topic(key):
                pass  # changes other tests made meanwhile
            assert json.loads(message.data) == expected


async def test_a_task_submitted_over_the_bus_runs_and_gives_its_result(shared_appliance, unix):
    async with open_client(unix, shared_appliance.token, name="task-client") as bus:
        task = await call(bus, "svc.tasks.submit", {"kernel": "rms", "input": [3, 4, 3, 4]})
        assert (task["kernel"], task["submitted_by"]) == ("rms", "bus:task-client")
        result = await call(bus, "svc.tasks.result", {"id": task["id"], "wait": WAIT})
        assert result == {
            "task_id": task["id"],
            "kernel": "rms",
            "outputs": {"rms": 3.5355339059327378},
        }
        finished = await call(bus, "svc.tasks.get", {"id": task["id"]})
        assert finished["state"] == "succeeded"
        text = await refused(bus, "svc.tasks.cancel", {"id": task["id"]})
        assert text.startswith("task_finished: ")
    async with http(shared_appliance) as client:
        over_http = await client.get(f"/api/v1/tasks/{task['id']}/result")
    assert over_http.json() == result


@pytest.mark.parametrize(
    ("topic", "body", "code"),
    [
        ("svc.config.get", {"key": "acme/none/prod/x"}, "key_not_found"),
        ("svc.config.get", {"key": "not a key"}, "invalid_key"),
        ("svc.config.get", b"{not json", "malformed_json"),
        ("svc.config.get", {"name": KEY}, "validation_failed"),
        ("svc.config.put", {"key": KEY}, "unknown_method"),
        ("svc.tasks.submit", {"kernel": "no-such-kernel", "input": [1]}, "unknown_kernel"),
        ("svc.tasks.submit", {"kernel": "rms", "input": ["x"]}, "bad_input"),
        ("svc.tasks.submit", b"[1, 2]", "validation_failed"),
        ("svc.tasks.get", {"id": "0000000000000000"}, "task_not_found"),
        ("svc.tasks.cancel", {"id": "0000000000000000"}, "task_not_found"),
        ("svc.tasks.result", {"id": "0000000000000000", "wait": -1}, "validation_failed"),
    ],
)
async def test_bad_requests_get_error_replies_with_stable_codes(
    shared_appliance, unix, topic, body, code
):
    # A name of its own: the last case's connection may not be detached yet (name_taken).
    name = f"bad-caller-{secrets.token_hex(4)}"
    async with open_client(unix, shared_appliance.token, name=name) as bus:
        text = await refused(bus, topic, body)
        assert text.startswith(f"{code}: "), text
        assert (await call(bus, "svc.health", b""))["status"] == "ok"  # still serving


async def test_a_token_limited_to_plant_publishes_there_and_nowhere_else(shared_appliance, unix):
    limited = create_token(
        shared_appliance, "plant-driver", "operator", bus_publish=["plant.>"], bus_subscribe=[]
    )
    assert (limited["bus_publish"], limited["bus_subscribe"]) == (["plant.>"], [])
    async with open_client(unix, shared_appliance.token, name="plant-watcher") as watcher:
        samples = await watcher.subscribe("plant.>")
        await _settle(watcher)
        async with open_client(unix, limited["token"], name="plant-driver") as driver:
            await driver.publish("plant.line3.temp", b"21.5")
            with trio.fail_after(WAIT):
                message = await samples.__anext__()
            assert (message.topic, message.data) == ("plant.line3.temp", b"21.5")
            text = await refused(driver, "svc.health", b"")  # a request is a publish
            assert text.startswith("forbidden: ")
            await driver.publish("office.lights", b"on")
            with trio.fail_after(WAIT):
                closed = await driver.wait_closed()
            assert (closed.reason, closed.code) == ("forbidden", 32)
            with pytest.raises(ConnectionClosed):
                await driver.publish("plant.line3.temp", b"22.0")


async def test_a_token_without_subscribe_patterns_cannot_subscribe(shared_appliance, unix):
    publisher_only = create_token(shared_appliance, "publisher-only", "operator", bus_subscribe=[])
    async with open_client(unix, publisher_only["token"], name="publisher-only") as bus:
        await bus.subscribe("plant.>")
        with trio.fail_after(WAIT):
            closed = await bus.wait_closed()
        assert closed.reason == "forbidden"


@pytest.mark.parametrize(
    ("role", "fields", "code"),
    [
        ("operator", {"bus_publish": ["plant..temp"]}, "invalid_pattern"),
        ("operator", {"bus_subscribe": ["plant.>.x"]}, "invalid_pattern"),
        ("operator", {"bus_publish": [7]}, "invalid_pattern"),
        ("viewer", {"bus_publish": ["plant.>"]}, "pattern_exceeds_role"),
        ("replica", {"bus_subscribe": ["config.>"]}, "pattern_exceeds_role"),
        ("operator", {"bus_publish": "plant.>"}, "validation_failed"),
    ],
)
def test_bad_bus_patterns_are_refused_at_creation(shared_appliance, role, fields, code):
    with shared_appliance.client(shared_appliance.token) as client:
        before = client.get("/api/v1/auth/tokens").json()["tokens"]
        response = client.post(
            "/api/v1/auth/tokens", json={"name": "refused", "role": role, **fields}
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == code
        assert client.get("/api/v1/auth/tokens").json()["tokens"] == before  # nothing stored


async def test_a_viewer_token_may_narrow_its_subscriptions(shared_appliance, unix):
    viewer = create_token(shared_appliance, "plant-viewer", "viewer", bus_subscribe=["plant.>"])
    async with open_client(unix, viewer["token"], name="plant-viewer") as bus:
        await bus.subscribe("plant.*.temp")  # covered by plant.>
        await bus.subscribe("office.>")
        with trio.fail_after(WAIT):
            closed = await bus.wait_closed()
        assert closed.reason == "forbidden"
        assert "office.>" in closed.text


# --- the parts, in this process --------------------------------------------------------


def test_config_topics_map_dots_and_fall_back_for_long_keys():
    assert config_topic("acme/pump/prod/limits") == "config.changed.acme.pump.prod.limits"
    assert config_topic("a.b/c-d/e_f/g.h.i") == "config.changed.a:b.c-d.e_f.g:h:i"
    longest = "/".join(["x" * 64] * 4)
    assert config_topic(longest) == LONG_KEY_TOPIC
    fits = "/".join(["x" * 60] * 3 + ["x" * 57])
    assert len(config_topic(fits)) == 255


def test_handler_errors_become_codes_and_details():
    problem = Problem(
        422, "validation_failed", "bad shape", errors=[{"field": "key", "message": "required"}]
    )
    assert str(service_error(problem)) == "validation_failed: bad shape (key: required)"
    assert str(service_error(NotFound("key_not_found", "no key a/b/c/d"))) == (
        "key_not_found: no key a/b/c/d"
    )
    assert str(service_error(KeyError("x"))) == "internal_error: KeyError: 'x'"


async def test_an_internal_connection_takes_only_its_secret_and_its_principal(tmp_path):
    endpoint = BusEndpoint(
        authenticate=lambda token: None, node=NodeRecord(name="box"), unix_path=tmp_path / "s"
    )
    principal = BusPrincipal.with_patterns("inside", "system", ["plant.>"], ["plant.>"])
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.serve)
        stream, _ = endpoint.connect_internal(principal)
        with pytest.raises(ConnectionClosed, match="unauthenticated"):
            await BusClient.over(nursery, stream, "apl_guess", name="guesser")
        stream, secret = endpoint.connect_internal(principal)
        client = await BusClient.over(nursery, stream, secret, name="inside")
        samples = await client.subscribe("plant.>")
        await client.publish("plant.a", b"1")
        with trio.fail_after(WAIT):
            assert (await samples.__anext__()).data == b"1"
        await client.publish("office.a", b"2")
        with trio.fail_after(WAIT):
            assert (await client.wait_closed()).reason == "forbidden"
        await endpoint.stop()
        nursery.cancel_scope.cancel()  # the clients' keep-alive tasks
    with pytest.raises(RuntimeError):
        endpoint.connect_internal(principal)


async def test_services_in_process_reconnect_when_cut_off_and_stop_before_the_endpoint(tmp_path):
    node = NodeRecord(name="box")
    principal = BusPrincipal.with_patterns("caller", "operator", [">"], [">"])
    endpoint = BusEndpoint(
        authenticate=lambda token: principal if token == "apl_caller" else None,
        node=node,
        unix_path=tmp_path / "bus.sock",
    )
    services = BusServices(endpoint, health=Health("9.9"))  # no config, no tasks
    async with trio.open_nursery() as nursery:
        await nursery.start(endpoint.serve)
        await nursery.start(services.serve)
        async with open_client(tmp_path / "bus.sock", "apl_caller", name="caller") as bus:
            assert (await call(bus, "svc.health", b""))["version"] == "9.9"
            with pytest.raises(NoResponders):  # no scheduler: no task services
                await call(bus, "svc.tasks.submit", {"kernel": "rms", "input": [1]})
            inside = next(
                p for p in endpoint.peers.values() if p.conn.peer_node.name == "box.services"
            )
            inside.cut_off("slow_consumer", "cut by the test")
            with trio.fail_after(WAIT):
                while True:  # answered again once the services have reconnected
                    try:
                        assert (await call(bus, "svc.health", b""))["version"] == "9.9"
                        break
                    except RequestFailed as exc:
                        assert exc.status == "no_responders"
                        await trio.sleep(0.1)
        await services.stop()
        async with open_client(tmp_path / "bus.sock", "apl_caller", name="late") as bus:
            with pytest.raises(NoResponders):  # stopped: gone, or going with a reply
                await call(bus, "svc.health", b"")
        await endpoint.stop()
        nursery.cancel_scope.cancel()


async def _settle(client: BusClient) -> None:
    """Wait until the endpoint has handled what `client` sent: a call to a service is
    answered after everything before it on the connection."""
    with trio.fail_after(WAIT):
        await client.request("svc.health", b"", timeout=WAIT)
