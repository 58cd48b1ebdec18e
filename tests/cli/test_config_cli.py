"""`appliance config get|put|release|watch` against the running service (and a real etcd
for `--etcd`)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.config.etcd_server import EtcdServer, b64, running_etcd


@pytest.fixture
def etcd(tmp_path) -> Iterator[EtcdServer]:
    yield from running_etcd(tmp_path)


def test_put_get_release_and_explain(cli, appliance, tmp_path):
    data = ["--data-dir", str(appliance.data_dir)]
    key = "acme/pump/prod/limits"
    first = cli("config", "put", key, "--content", '{"rate": 1}', "--format", "json", *data)
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)
    assert created["version"]["number"] == 1 and created["key"] == key

    source = tmp_path / "limits.toml"
    source.write_text("rate = 2\n")
    second = cli(
        "config", "put", key, "--file", str(source), "--format", "toml", "--comment", "two", *data
    )
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["version"]["comment"] == "two"
    piped = cli("config", "put", key, "-", "--format", "yaml", *data, input="rate: 3\n")
    assert json.loads(piped.stdout)["version"]["number"] == 3

    latest = cli("config", "get", key, "--url", appliance.url, "--token", appliance.token)
    assert latest.returncode == 0 and latest.stdout == "rate: 3\n"  # exactly the content
    older = cli("config", "get", key, "--version", "1", *data)
    assert older.stdout == '{"rate": 1}'

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"version": 2, "priority": 0}]))
    released = cli("config", "release", key, "--rules", f"@{rules}", *data)
    assert released.returncode == 0, released.stderr
    assert json.loads(released.stdout)["rules"] == [{"labels": {}, "version": 2, "priority": 0}]
    assert cli("config", "get", key, *data).stdout == "rate = 2\n"
    explained = json.loads(cli("config", "get", key, "--explain", *data).stdout)
    assert explained["version"] == 2 and explained["matched_rule"] == 0

    nowhere = '[{"labels": {"site": "nowhere"}, "version": 1, "priority": 1}]'
    assert cli("config", "release", key, "--rules", nowhere, *data).returncode == 0
    unreleased = cli("config", "get", key, *data)
    assert unreleased.returncode == 1 and "not_released" in unreleased.stderr
    assert unreleased.stdout == ""


def test_failures_and_usage_errors(cli, appliance):
    data = ["--data-dir", str(appliance.data_dir)]
    key = "acme/pump/prod/bad"

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return cli("config", *args, *data, **kwargs)

    unparsable = run("put", key, "--content", "{", "--format", "json")
    assert unparsable.returncode == 1 and "content_does_not_parse" in unparsable.stderr
    bad_key = run("put", "acme/pump/prod", "--content", "x", "--format", "text")
    assert bad_key.returncode == 2 and "4 segments" in bad_key.stderr
    two_ways = run("put", key, "-", "--content", "x", "--format", "text", input="y")
    assert two_ways.returncode == 2 and "one way" in two_ways.stderr
    no_way = run("put", key, "--format", "text")
    assert no_way.returncode == 2
    missing_file = run("put", key, "--file", "/nonexistent/x", "--format", "text")
    assert missing_file.returncode == 2 and "cannot read" in missing_file.stderr
    bad_format = run("put", key, "--content", "x", "--format", "xml")
    assert bad_format.returncode == 2  # argparse
    assert run("get", key).returncode == 1 and "key_not_found" in run("get", key).stderr

    assert run("put", key, "--content", "x", "--format", "text").returncode == 0
    not_json = run("release", key, "--rules", "[{")
    assert not_json.returncode == 2 and "--rules is not valid JSON" in not_json.stderr
    unknown = run("release", key, "--rules", '[{"version": 7, "priority": 0}]')
    assert unknown.returncode == 1 and "unknown_version" in unknown.stderr
    duplicate = run(
        "release", key, "--rules", '[{"version": 1, "priority": 0}, {"version": 1, "priority": 0}]'
    )
    assert duplicate.returncode == 1 and "duplicate_priority" in duplicate.stderr
    viewer = cli("token", "create", "--name", "v", "--role", "viewer", *data).stdout.strip()
    refused = run("put", key, "--content", "y", "--format", "text", "--token", viewer)
    assert refused.returncode == 1 and "forbidden" in refused.stderr
    assert run("watch", "--count", "0").returncode == 2
    gone = cli("config", "get", key, "--url", "http://127.0.0.1:9", "--token", "t")
    assert gone.returncode == 1 and "cannot reach" in gone.stderr


def test_watch_prints_one_json_line_per_change(cli, appliance):
    data = ["--data-dir", str(appliance.data_dir)]
    with appliance.client(appliance.token) as http:
        start = http.get("/api/v1/config/status").json()["revision"]
        for n, key in enumerate(["w/a/env/k", "w/b/env/k", "w/a/env/k"]):
            response = http.post(
                f"/api/v1/config/{key}/versions", json={"format": "json", "content": f"[{n}]"}
            )
            assert response.status_code == 201
    watched = cli(
        "config", "watch", "--prefix", "w/a/", "--after", str(start), "--count", "2", *data
    )
    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [(c["revision"], c["key"], c["version"]) for c in lines] == [
        (start + 1, "w/a/env/k", 1),
        (start + 3, "w/a/env/k", 2),
    ]

    # Live: a change made while the watch waits is printed as it happens.
    command = [sys.executable, "-m", "appliance", "config", "watch", "--count", "1", *data]
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as proc:
        deadline = time.monotonic() + 30
        with appliance.client(appliance.token) as http:
            # Until the watch is connected, its start point is after any change made now;
            # keep writing until one reaches it.
            while proc.poll() is None and time.monotonic() < deadline:
                http.post(
                    "/api/v1/config/w/live/env/k/versions", json={"format": "text", "content": "x"}
                )
                time.sleep(0.2)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert json.loads(out)["key"] == "w/live/env/k"


def test_watch_resumed_from_a_compacted_revision_fails(cli, start_appliance):
    process = start_appliance(env={"APPLIANCE_CONFIG_LOG_RETENTION": "10"})
    with process.client(process.token) as http:
        for n in range(12):
            response = http.post(
                "/api/v1/config/c/a/e/k/versions", json={"format": "json", "content": str(n)}
            )
            assert response.status_code == 201
    result = cli("config", "watch", "--after", "0", "--data-dir", str(process.data_dir))
    assert result.returncode == 1 and "revision_compacted" in result.stderr


def test_put_and_release_into_etcd(cli, etcd, tmp_path):
    prefix = "/cli-test/"
    key = "acme/pump/prod/limits"
    target = ["--etcd", etcd.url, "--etcd-prefix", prefix]
    first = cli("config", "put", key, "--content", '{"rate": 1}', "--format", "json", *target)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["version"] == 1
    second = cli("config", "put", key, "--content", "rate = 2", "--format", "toml", *target)
    assert json.loads(second.stdout)["version"] == 2
    released = cli("config", "release", key, "--rules", '[{"version": 2, "priority": 0}]', *target)
    assert released.returncode == 0, released.stderr

    listing = httpx.post(
        f"{etcd.url}/v3/kv/range",
        json={"key": b64(prefix), "range_end": b64(prefix[:-1] + "0"), "keys_only": True},
        timeout=10,
    ).json()
    stored = sorted(base64.b64decode(kv["key"]).decode() for kv in listing["kvs"])
    assert stored == [  # the layout replicas of etcd follow (docs/config.md)
        f"{prefix}releases/{key}",
        f"{prefix}versions/{key}/0000000001",
        f"{prefix}versions/{key}/0000000002",
    ]

    bad = cli("config", "put", key, "--content", "{", "--format", "json", *target)
    assert bad.returncode == 1 and "content_does_not_parse" in bad.stderr
    unknown = cli("config", "release", key, "--rules", '[{"version": 9, "priority": 0}]', *target)
    assert unknown.returncode == 1 and "unknown_version" in unknown.stderr
    down = cli(
        "config", "put", key, "--content", "x", "--format", "text", "--etcd", "http://127.0.0.1:9"
    )
    assert down.returncode == 1 and "etcd" in down.stderr
