"""The bus over HTTP in the real process: peers, topics with rates, publishing, metrics.

One appliance serves the module, with a small bus frame (8 KiB) so that the 413 for a
message over it is cheap to provoke. Bus clients are `appliance.bus.client`; HTTP calls
go through `httpx.AsyncClient` so the test's bus clients keep reading meanwhile.
"""

from __future__ import annotations

import base64
import json
import secrets

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from appliance.bus.client import BusClient, NoResponders, open_client
from tests.api.conftest import check_problem
from tests.conftest import ApplianceProcess

WAIT = 10.0  # every wait in these tests is bounded by this
MAX_FRAME = 8192


@pytest.fixture(scope="module")
def bus_api(tmp_path_factory):
    env = {
        "APPLIANCE_BUS_MAX_FRAME": str(MAX_FRAME),
        "APPLIANCE_RATELIMIT_RATE": "10000",
        "APPLIANCE_RATELIMIT_BURST": "10000",
    }
    process = ApplianceProcess(tmp_path_factory.mktemp("busapi") / "data", env=env)
    process.wait_ready()
    yield process
    process.stop()


def unix_socket(process: ApplianceProcess) -> str:
    return json.loads((process.data_dir / "run" / "endpoints.json").read_text())["bus_unix"]


def http(process: ApplianceProcess, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token or process.token}"}
    return httpx.AsyncClient(base_url=process.url, headers=headers, timeout=WAIT)


async def settle(client: BusClient) -> None:
    """Wait until the endpoint has handled what `client` sent (a request to nobody is
    answered after everything before it on the connection)."""
    with pytest.raises(NoResponders), trio.fail_after(WAIT):
        await client.request("svc.settle-nobody", timeout=5)


async def next_message(subscription):
    with trio.fail_after(WAIT):
        return await subscription.__anext__()


def unique(prefix: str) -> str:
    return f"{prefix}.t{secrets.token_hex(4)}"


async def test_http_publish_is_delivered_to_bus_subscribers(bus_api):
    topic = unique("http")
    async with open_client(unix_socket(bus_api), bus_api.token, name="http-listener") as bus:
        subscription = await bus.subscribe(topic)
        await settle(bus)
        async with http(bus_api) as api:
            endpoint_name = (await api.get("/api/v1/bus/peers")).json()["endpoint"]["name"]
            body = {"topic": topic, "data": "21.5 °C", "headers": {"unit": "C"}}
            response = await api.post("/api/v1/bus/publish", json=body)
        assert response.status_code == 202, response.text
        assert response.json() == {
            "topic": topic,
            "bytes": len("21.5 °C".encode()),
            "retained": False,
            "deliveries": 1,
        }
        message = await next_message(subscription)
    assert (message.topic, message.data, message.headers) == (
        topic,
        "21.5 °C".encode(),
        {"unit": "C"},
    )
    assert message.source == endpoint_name and not message.retained


async def test_http_publish_of_bytes_with_retain_reaches_later_subscribers(bus_api):
    topic = unique("retained")
    payload = bytes(range(256))
    async with http(bus_api) as api:
        body = {"topic": topic, "data_base64": base64.b64encode(payload).decode(), "retain": True}
        response = await api.post("/api/v1/bus/publish", json=body)
        assert response.status_code == 202, response.text
        assert response.json()["deliveries"] == 0  # nobody listens yet
        async with open_client(unix_socket(bus_api), bus_api.token) as bus:
            subscription = await bus.subscribe(topic.rsplit(".", 1)[0] + ".*")
            message = await next_message(subscription)
        assert (message.topic, message.data, message.retained) == (topic, payload, True)
        listing = (await api.get("/api/v1/bus/topics", params={"prefix": topic})).json()
    [row] = listing["topics"]
    assert (row["topic"], row["messages"], row["bytes"], row["retained"]) == (topic, 1, 256, True)


async def test_topics_count_traffic_with_a_rate(bus_api):
    prefix = unique("rate")
    async with (
        open_client(unix_socket(bus_api), bus_api.token, name="rate-pub") as publisher,
        open_client(unix_socket(bus_api), bus_api.token, name="rate-sub") as subscriber,
    ):
        subscription = await subscriber.subscribe(f"{prefix}.>")
        await settle(subscriber)
        for i in range(20):
            await publisher.publish(f"{prefix}.a", b"x" * i)
        await publisher.publish(f"{prefix}.b", b"yy")
        await settle(publisher)
        for _ in range(21):
            await next_message(subscription)
        async with http(bus_api) as api:
            listing = (await api.get("/api/v1/bus/topics", params={"prefix": prefix})).json()
            limited = await api.get("/api/v1/bus/topics", params={"prefix": prefix, "limit": 1})
            peers = (await api.get("/api/v1/bus/peers")).json()["connections"]
    a, b = listing["topics"]
    assert (a["topic"], a["messages"], a["bytes"], a["deliveries"]) == (
        f"{prefix}.a",
        20,
        sum(range(20)),
        20,
    )
    assert (b["topic"], b["messages"], b["bytes"], b["dropped"]) == (f"{prefix}.b", 1, 2, 0)
    assert a["rate"] > 0 and b["rate"] > 0
    assert not listing["truncated"] and listing["window_s"] == 10
    assert listing["totals"]["messages"] >= 21
    assert [t["topic"] for t in limited.json()["topics"]] == [f"{prefix}.a"]
    assert limited.json()["truncated"] is True
    by_node = {p["node"]["name"]: p for p in peers if p["node"]}
    assert (by_node["rate-pub"]["messages_in"], by_node["rate-pub"]["bytes_in"]) == (
        21,
        sum(range(20)) + 2,
    )
    assert by_node["rate-sub"]["messages_out"] == 21 and by_node["rate-sub"]["dropped"] == 0


async def test_peers_lists_connections_and_finds_nodes_by_label(bus_api):
    socket_path = unix_socket(bus_api)
    tcp = json.loads((bus_api.data_dir / "run" / "endpoints.json").read_text())["bus_tcp"]
    async with (
        open_client(socket_path, bus_api.token, name="press-7", labels={"kind": "sensor"}) as a,
        open_client(tcp, bus_api.token, name="plc-2", labels={"kind": "plc"}),
        open_client(socket_path, bus_api.token),  # anonymous: listed, but not discoverable
    ):
        await settle(a)
        async with http(bus_api) as api:
            everyone = (await api.get("/api/v1/bus/peers")).json()
            sensors = await api.get("/api/v1/bus/peers", params={"selector": "kind=sensor"})
            not_plc = await api.get("/api/v1/bus/peers", params={"selector": "kind,kind!=plc"})
    listed = everyone["connections"]
    ids = [c["id"] for c in listed]
    assert ids == sorted(ids)
    # Connections of earlier tests may still be closing: ours are the newest three.
    first = next(c["id"] for c in listed if c["node"] and c["node"]["name"] == "press-7")
    connections = [c for c in listed if c["id"] >= first]
    assert len(connections) == 3
    by_node = {c["node"]["name"] if c["node"] else None: c for c in connections}
    assert set(by_node) == {"press-7", "plc-2", None}
    press = by_node["press-7"]
    assert press["node"]["labels"] == {"kind": "sensor"}
    assert press["principal"] == {"name": "bootstrap-admin", "role": "admin"}
    assert (press["transport"], press["remote"], press["state"]) == ("unix", "", "established")
    assert press["link"] is False and press["subscriptions"] == 0
    assert press["connected_since"] > 1.6e9
    assert by_node["plc-2"]["transport"] == "tcp"
    assert by_node["plc-2"]["remote"].startswith("127.0.0.1:")
    assert everyone["endpoint"]["host"]["pid"] == bus_api.proc.pid
    assert [c["node"]["name"] for c in sensors.json()["connections"]] == ["press-7"]
    assert [c["node"]["name"] for c in not_plc.json()["connections"]] == ["press-7"]


@pytest.mark.parametrize(
    "selector", ["kind in (a", "=x", "kind=(x", "a,,b", "x" * 4097, "bad key=1"]
)
async def test_a_bad_selector_is_a_400(bus_api, selector):
    async with http(bus_api) as api:
        response = await api.get("/api/v1/bus/peers", params={"selector": selector})
    body = check_problem(response, 400, "invalid_selector")
    assert body["errors"][0]["field"] == "selector"


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"prefix": "p" * 256}, "prefix")],
)
async def test_bad_topic_listing_parameters_are_422(bus_api, params, field):
    async with http(bus_api) as api:
        response = await api.get("/api/v1/bus/topics", params=params)
    body = check_problem(response, 422, "validation_failed")
    assert body["errors"][0]["field"] == field


BAD_TOPIC = "bad.topic"  # every refused publish below uses this topic or a bad one


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"topic": "bad..topic", "data": "x"}, 422, "invalid_topic", "topic"),
        ({"topic": "bad.*", "data": "x"}, 422, "invalid_topic", "topic"),
        ({"topic": "bad.>", "data": "x"}, 422, "invalid_topic", "topic"),
        ({"topic": "", "data": "x"}, 422, "invalid_topic", "topic"),
        ({"topic": BAD_TOPIC, "data": "x", "data_base64": "eA=="}, 422, None, "data_base64"),
        ({"topic": BAD_TOPIC, "data_base64": "not base64!"}, 422, None, "data_base64"),
        (b'{"topic": "bad.topic", "data": "\\ud800"}', 422, None, "data"),  # lone surrogate
        ({"topic": BAD_TOPIC, "data": 5}, 422, None, "data"),
        ({"topic": BAD_TOPIC, "retain": "yes"}, 422, None, "retain"),
        ({"topic": BAD_TOPIC, "headers": {"unit": 5}}, 422, None, "headers"),
        ({"topic": BAD_TOPIC, "headers": {"bad key": "v"}}, 422, None, "headers"),
        ({"topic": BAD_TOPIC, "headers": ["x"]}, 422, None, "headers"),
        ({"topic": BAD_TOPIC, "colour": "red"}, 422, None, "colour"),
        ({"data": "x"}, 422, None, "topic"),
        ({"topic": BAD_TOPIC, "data": "x" * MAX_FRAME}, 413, "message_too_large", None),
    ],
)
async def test_bad_publish_bodies_are_refused_and_publish_nothing(
    bus_api, body, status, code, field
):
    async with open_client(unix_socket(bus_api), bus_api.token) as bus:
        subscription = await bus.subscribe("bad.>")
        await settle(bus)
        async with http(bus_api) as api:
            if isinstance(body, bytes):  # JSON that httpx would not write
                json_type = {"Content-Type": "application/json"}
                response = await api.post("/api/v1/bus/publish", content=body, headers=json_type)
            else:
                response = await api.post("/api/v1/bus/publish", json=body)
            problem = check_problem(response, status, code or "validation_failed")
            if field is not None:
                assert field in [error["field"].split(".")[0] for error in problem["errors"]]
            listing = (await api.get("/api/v1/bus/topics", params={"prefix": BAD_TOPIC})).json()
            assert listing["topics"] == []
            # A good publish after it: the first message the subscriber gets is that one.
            marker = await api.post("/api/v1/bus/publish", json={"topic": "bad.marker"})
            assert marker.status_code == 202, marker.text
        assert (await next_message(subscription)).topic == "bad.marker"


async def test_publish_bodies_that_are_not_json_objects_are_refused(bus_api):
    async with http(bus_api) as api:
        not_json = await api.post(
            "/api/v1/bus/publish", content=b"{", headers={"Content-Type": "application/json"}
        )
        check_problem(not_json, 400, "malformed_json")
        wrong_type = await api.post(
            "/api/v1/bus/publish", content=b"topic=x", headers={"Content-Type": "text/plain"}
        )
        check_problem(wrong_type, 415, "unsupported_media_type")
        array = await api.post("/api/v1/bus/publish", json=["bad.topic"])
        check_problem(array, 422, "validation_failed")
        huge = await api.post(
            "/api/v1/bus/publish", json={"topic": BAD_TOPIC, "data": "x" * (MAX_FRAME * 2 + 65536)}
        )
        check_problem(huge, 413, "payload_too_large")
        listing = (await api.get("/api/v1/bus/topics", params={"prefix": BAD_TOPIC})).json()
    assert listing["topics"] == []


async def test_a_token_publishes_only_where_its_bus_patterns_allow(bus_api):
    async with http(bus_api) as api:
        created = await api.post(
            "/api/v1/auth/tokens",
            json={
                "name": f"line3-{secrets.token_hex(3)}",
                "role": "operator",
                "bus_publish": ["line3.>"],
            },
        )
        assert created.status_code == 201, created.text
        token = created.json()["token"]
    async with http(bus_api, token) as api:
        allowed = await api.post("/api/v1/bus/publish", json={"topic": "line3.temp"})
        refused = await api.post("/api/v1/bus/publish", json={"topic": "line4.temp"})
        listing = (await api.get("/api/v1/bus/topics", params={"prefix": "line4"})).json()
    assert allowed.status_code == 202, allowed.text
    assert "line4.temp" in check_problem(refused, 403, "forbidden")["detail"]
    assert listing["topics"] == []


async def test_bus_metrics_by_family_and_connection(bus_api):
    family = f"metrics{secrets.token_hex(3)}"
    async with open_client(unix_socket(bus_api), bus_api.token, name="metered") as bus:
        subscription = await bus.subscribe(f"{family}.>")
        await settle(bus)
        for _ in range(3):
            await bus.publish(f"{family}.x", b"abcd")
        for _ in range(3):
            await next_message(subscription)
        async with http(bus_api) as api:
            samples = parse_metrics((await api.get("/metrics")).text)
    assert samples[("appliance_bus_messages_total", (("family", family),))] == 3
    assert samples[("appliance_bus_bytes_total", (("family", family),))] == 12
    assert samples[("appliance_bus_deliveries_total", (("family", family),))] == 3
    assert samples[("appliance_bus_dropped_total", (("family", family),))] == 0
    me = (("node", "metered"), ("principal", "bootstrap-admin"))
    for direction, messages, size in (("in", 3, 12), ("out", 3, 12)):
        labels = (("direction", direction), *me)
        assert samples[("appliance_bus_connection_messages_total", labels)] == messages
        assert samples[("appliance_bus_connection_bytes_total", labels)] == size
    assert samples[("appliance_bus_connection_dropped_total", me)] == 0
    assert samples[("appliance_bus_connections", (("transport", "unix"),))] >= 1
    assert samples[("appliance_bus_topics_tracked", ())] >= 1
    assert samples[("appliance_bus_connections_opened_total", ())] >= 1


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
