"""`appliance bus pub|sub|call|peers` against the real process, as a user runs them.

Each command is a real `python -m appliance` process; the other side is an
`appliance.bus.client` in the test (a subscriber, an echo service, named nodes). A
background `sub` is known to be subscribed when the HTTP peers listing shows its
subscription, so no test sleeps on a guess.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from functools import partial

import pytest
import trio

from appliance.bus.client import BusClient, NoResponders, open_client
from tests.conftest import ApplianceProcess, run_cli

WAIT = 10.0  # every wait in these tests is bounded by this
ENDPOINT_MISSING, NO_RESPONDERS, TIMEOUT, NOT_ALLOWED, INTERRUPTED = 68, 69, 75, 77, 130


@pytest.fixture(scope="module")
def bus_cli(tmp_path_factory):
    roomy = {"APPLIANCE_RATELIMIT_RATE": "10000", "APPLIANCE_RATELIMIT_BURST": "10000"}
    process = ApplianceProcess(tmp_path_factory.mktemp("buscli") / "data", env=roomy)
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def role_tokens(bus_cli) -> dict[str, str]:
    tokens = {}
    with bus_cli.client(bus_cli.token) as http:
        for role in ("viewer", "operator", "replica"):
            response = http.post("/api/v1/auth/tokens", json={"name": f"cli-{role}", "role": role})
            assert response.status_code == 201, response.text
            tokens[role] = response.json()["token"]
    return tokens


def endpoints(process: ApplianceProcess) -> dict[str, str]:
    return json.loads((process.data_dir / "run" / "endpoints.json").read_text())


def bus(process: ApplianceProcess, *args: str, token: str | None = None, **kwargs):
    """`appliance bus ARGS --data-dir D`, with the admin token in $APPLIANCE_TOKEN."""
    env = {"APPLIANCE_TOKEN": token or process.token}
    return run_cli("bus", *args, "--data-dir", str(process.data_dir), env=env, **kwargs)


async def bus_async(process: ApplianceProcess, *args: str, **kwargs):
    return await trio.to_thread.run_sync(partial(bus, process, *args, **kwargs))


async def settle(client: BusClient) -> None:
    """Wait until the endpoint has handled what `client` sent."""
    with pytest.raises(NoResponders), trio.fail_after(WAIT):
        await client.request("svc.settle-nobody", timeout=5)


def _ctrl_c_as_in_a_terminal() -> None:
    # A job started in the background (CI's runner may be one) inherits SIGINT ignored,
    # and Python then leaves it ignored: Ctrl-C would never reach the command.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_sub(process: ApplianceProcess, *args: str) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    environment["APPLIANCE_TOKEN"] = process.token
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "bus", "sub", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )


def wait_subscribed(process: ApplianceProcess, name: str, sub: subprocess.Popen) -> None:
    """Until the peers listing shows node `name` with a subscription (bounded)."""
    deadline = time.monotonic() + WAIT
    with process.client(process.token) as http:
        while time.monotonic() < deadline:
            assert sub.poll() is None, sub.communicate()
            connections = http.get("/api/v1/bus/peers").json()["connections"]
            if any(
                c["node"] and c["node"]["name"] == name and c["subscriptions"] for c in connections
            ):
                return
            time.sleep(0.02)
    raise AssertionError(f"{name} never subscribed")


async def next_message(subscription):
    with trio.fail_after(WAIT):
        return await subscription.__anext__()


# --- pub -----------------------------------------------------------------------------------


async def test_pub_is_seen_by_a_subscriber(bus_cli):
    async with open_client(endpoints(bus_cli)["bus_unix"], bus_cli.token) as client:
        subscription = await client.subscribe("cli.pub.>")
        await settle(client)
        result = await bus_async(
            bus_cli, "pub", "cli.pub.temp", "21.5", "--header", "unit=C", "--name", "cli-pub"
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        message = await next_message(subscription)
        assert (message.topic, message.data, message.headers, message.source) == (
            "cli.pub.temp",
            b"21.5",
            {"unit": "C"},
            "cli-pub",
        )
        stdin = await trio.to_thread.run_sync(
            partial(bus, bus_cli, "pub", "cli.pub.raw", "-", "--retain", input="from stdin")
        )
        assert stdin.returncode == 0, stdin.stderr
        message = await next_message(subscription)
        assert (message.topic, message.data) == ("cli.pub.raw", b"from stdin")
    async with open_client(endpoints(bus_cli)["bus_tcp"], bus_cli.token) as late:
        retained = await next_message(await late.subscribe("cli.pub.raw"))
        assert (retained.data, retained.retained) == (b"from stdin", True)


def test_pub_over_tcp_and_unix_urls(bus_cli):
    for url in (endpoints(bus_cli)["bus_tcp"], "unix://" + endpoints(bus_cli)["bus_unix"]):
        result = run_cli("bus", "pub", "cli.url", "x", "--bus", url, "--token", bus_cli.token)
        assert result.returncode == 0, result.stderr
    with bus_cli.client(bus_cli.token) as http:
        [topic] = http.get("/api/v1/bus/topics", params={"prefix": "cli.url"}).json()["topics"]
    assert topic["messages"] == 2


# --- sub -----------------------------------------------------------------------------------


def test_sub_count_prints_that_many_messages_and_exits_0(bus_cli):
    sub = start_sub(
        bus_cli,
        "cli.sub.>",
        "--count",
        "2",
        "--json",
        "--name",
        "cli-sub",
        "--data-dir",
        str(bus_cli.data_dir),
    )
    try:
        wait_subscribed(bus_cli, "cli-sub", sub)
        with bus_cli.client(bus_cli.token) as http:
            for body in (
                {"topic": "cli.sub.a", "data": "first", "headers": {"k": "v"}},
                {"topic": "cli.sub.b", "data_base64": "//79"},  # not UTF-8
                {"topic": "cli.sub.c", "data": "third"},
            ):
                assert http.post("/api/v1/bus/publish", json=body).status_code == 202
        stdout, stderr = sub.communicate(timeout=WAIT)
    finally:
        sub.kill()
        sub.wait()
    assert sub.returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [line["topic"] for line in lines] == ["cli.sub.a", "cli.sub.b"]
    assert lines[0]["data"] == "first" and lines[0]["headers"] == {"k": "v"}
    assert lines[1]["data_base64"] == "//79" and "data" not in lines[1]
    assert lines[0]["gap"] == 0 and lines[0]["retained"] is False


def test_sub_plain_lines_and_ctrl_c_exits_130(bus_cli):
    sub = start_sub(bus_cli, "cli.int.*", "--name", "cli-int", "--data-dir", str(bus_cli.data_dir))
    try:
        wait_subscribed(bus_cli, "cli-int", sub)
        with bus_cli.client(bus_cli.token) as http:
            body = {"topic": "cli.int.x", "data": "hello world"}
            assert http.post("/api/v1/bus/publish", json=body).json()["deliveries"] == 1
        assert sub.stdout.readline() == "cli.int.x hello world\n"
        sub.send_signal(signal.SIGINT)
        stdout, stderr = sub.communicate(timeout=WAIT)
    finally:
        sub.kill()
        sub.wait()
    assert sub.returncode == INTERRUPTED
    assert stdout == "" and "Traceback" not in stderr


async def test_sub_in_a_queue_group_shares_messages(bus_cli):
    """A --group member gets its share: with the test's member in the group too, the CLI
    gets exactly the messages the test's member did not."""
    sub = await trio.to_thread.run_sync(
        partial(
            start_sub,
            bus_cli,
            "cli.group.>",
            "--group",
            "g",
            "--count",
            "1",
            "--name",
            "cli-group",
            "--data-dir",
            str(bus_cli.data_dir),
        )
    )
    try:
        await trio.to_thread.run_sync(wait_subscribed, bus_cli, "cli-group", sub)
        async with open_client(endpoints(bus_cli)["bus_unix"], bus_cli.token) as client:
            mine = await client.subscribe("cli.group.>", group="g")
            await settle(client)
            received = []
            for i in range(2):  # round-robin: one to each member
                await client.publish(f"cli.group.n{i}", str(i).encode())
            received.append((await next_message(mine)).data.decode())
            stdout, _ = await trio.to_thread.run_sync(partial(sub.communicate, timeout=WAIT))
    finally:
        sub.kill()
        sub.wait()
    assert sub.returncode == 0
    [line] = stdout.splitlines()
    topic, data = line.split(" ")
    assert sorted([data, *received]) == ["0", "1"] and topic == f"cli.group.n{data}"


# --- call ----------------------------------------------------------------------------------


async def test_call_a_served_echo(bus_cli):
    async def echo(request):
        if request.data == b"fail":
            raise ValueError("asked to fail")
        if request.data == b"slow":
            await trio.sleep(WAIT)
        suffix = request.topic.removeprefix("svc.echo")
        return request.data.upper() if suffix == ".upper" else request.data

    async with open_client(endpoints(bus_cli)["bus_unix"], bus_cli.token, name="echo") as server:
        await server.serve("echo", echo)
        await settle(server)
        plain = await bus_async(bus_cli, "call", "echo", "hello")
        assert (plain.returncode, plain.stdout) == (0, "hello"), plain.stderr
        method = await bus_async(bus_cli, "call", "echo.upper", "hello")
        assert (method.returncode, method.stdout) == (0, "HELLO"), method.stderr
        full = await bus_async(bus_cli, "call", "svc.echo", "-", input="from stdin")
        assert (full.returncode, full.stdout) == (0, "from stdin"), full.stderr
        failed = await bus_async(bus_cli, "call", "echo", "fail")
        assert failed.returncode == 1
        assert "error" in failed.stderr and "asked to fail" in failed.stderr
        late = await bus_async(bus_cli, "call", "echo", "slow", "--timeout", "0.2")
        assert late.returncode == TIMEOUT and "timeout" in late.stderr
    nobody = await bus_async(bus_cli, "call", "nobody-serves-this")
    assert nobody.returncode == NO_RESPONDERS
    assert "no responders" in nobody.stderr and "svc.nobody-serves-this" in nobody.stderr


# --- peers ---------------------------------------------------------------------------------


async def test_peers_lists_nodes_and_filters_by_selector(bus_cli):
    unix = endpoints(bus_cli)["bus_unix"]
    async with (
        open_client(unix, bus_cli.token, name="peer-sensor", labels={"kind": "sensor"}) as a,
        open_client(unix, bus_cli.token, name="peer-plc", labels={"kind": "plc"}) as b,
    ):
        await settle(a)
        await settle(b)
        table = await bus_async(bus_cli, "peers")
        sensors = await bus_async(bus_cli, "peers", "--selector", "kind=sensor", "--json")
        nothing = await bus_async(bus_cli, "peers", "--selector", "kind=robot", "--json")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "VERSION", "HOST", "PID", "LABELS"]
    listed = {row.split()[0]: row.split() for row in rows}
    assert listed["peer-plc"][-1] == "kind=plc" and listed["peer-sensor"][-1] == "kind=sensor"
    assert listed["peer-sensor"][3] == str(os.getpid())
    assert sensors.returncode == 0, sensors.stderr
    [record] = json.loads(sensors.stdout)
    assert (record["name"], record["labels"]) == ("peer-sensor", {"kind": "sensor"})
    assert (nothing.returncode, json.loads(nothing.stdout)) == (0, [])


# --- what goes wrong -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["pub", "bad..topic", "x"],
        ["pub", "bad.*", "x"],
        ["pub", "ok.topic", "x", "--header", "novalue"],
        ["pub", "ok.topic", "x", "--header", "bad key=v"],
        ["sub", "a.>.b"],
        ["sub", "a.b", "--group", "bad group"],
        ["sub", "a.b", "--count", "0"],
        ["call", "bad..service"],
        ["call", "echo", "--timeout", "0"],
        ["call", "echo", "--timeout", "nan"],
        ["peers", "--selector", "kind in (a"],
        ["pub", "a", "x", "--bus", "http://127.0.0.1:1"],
        ["pub", "a", "x", "--bus", "tcp://127.0.0.1"],
        ["pub", "a", "x", "--bus", "unix://"],
    ],
)
def test_bad_arguments_are_usage_errors_and_send_nothing(bus_cli, args):
    result = bus(bus_cli, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("appliance: ") and "Traceback" not in result.stderr
    with bus_cli.client(bus_cli.token) as http:
        for prefix in ("bad", "ok", "a"):
            listing = http.get("/api/v1/bus/topics", params={"prefix": prefix}).json()
            assert listing["topics"] == []


def test_no_endpoint_or_no_listener_exits_68(bus_cli, tmp_path):
    token = ["--token", bus_cli.token]
    not_running = run_cli("bus", "pub", "a.b", "x", "--data-dir", str(tmp_path), *token)
    assert not_running.returncode == ENDPOINT_MISSING
    assert "no bus endpoint" in not_running.stderr and str(tmp_path) in not_running.stderr
    no_socket = run_cli("bus", "pub", "a.b", "x", "--bus", str(tmp_path / "bus.sock"), *token)
    assert no_socket.returncode == ENDPOINT_MISSING
    assert "cannot reach the bus" in no_socket.stderr
    with socket.socket() as unused:  # a port nobody listens on (bound, never listening)
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        refused = run_cli("bus", "peers", "--bus", f"tcp://127.0.0.1:{port}", *token)
    assert refused.returncode == ENDPOINT_MISSING and "refused" in refused.stderr.lower()


def test_no_token_is_a_usage_error(bus_cli, tmp_path):
    result = run_cli(
        "bus", "peers", "--bus", endpoints(bus_cli)["bus_unix"], "--data-dir", str(tmp_path)
    )
    assert result.returncode == 2 and "no token" in result.stderr


def test_refused_tokens_exit_77(bus_cli, role_tokens):
    bogus = f"apl_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    bad = bus(bus_cli, "peers", token=bogus)
    assert bad.returncode == NOT_ALLOWED and "unauthenticated" in bad.stderr
    viewer_pub = bus(bus_cli, "pub", "cli.forbidden", "x", token=role_tokens["viewer"])
    assert viewer_pub.returncode == NOT_ALLOWED and "forbidden" in viewer_pub.stderr
    viewer_call = bus(bus_cli, "call", "echo", token=role_tokens["viewer"])
    assert viewer_call.returncode == NOT_ALLOWED and "forbidden" in viewer_call.stderr
    replica_sub = bus(bus_cli, "sub", "cli.>", token=role_tokens["replica"])
    assert replica_sub.returncode == NOT_ALLOWED and "forbidden" in replica_sub.stderr
    with bus_cli.client(bus_cli.token) as http:
        listing = http.get("/api/v1/bus/topics", params={"prefix": "cli.forbidden"}).json()
    assert listing["topics"] == []
    operator = bus(bus_cli, "pub", "cli.allowed", "x", token=role_tokens["operator"])
    assert operator.returncode == 0, operator.stderr


def test_bus_commands_need_no_http(bus_cli):
    """The commands speak the bus protocol: the peers listing shows the CLI's connection
    (over the Unix socket, with its node name) while it waits."""
    sub = start_sub(
        bus_cli, "cli.proto", "--name", "cli-proto", "--data-dir", str(bus_cli.data_dir)
    )
    try:
        wait_subscribed(bus_cli, "cli-proto", sub)
        with bus_cli.client(bus_cli.token) as http:
            connections = http.get("/api/v1/bus/peers", params={"selector": ""}).json()
    finally:
        sub.send_signal(signal.SIGINT)
        sub.communicate(timeout=WAIT)
    [mine] = [c for c in connections["connections"] if c["node"]["name"] == "cli-proto"]
    assert mine["transport"] == "unix" and mine["principal"]["name"] == "bootstrap-admin"
