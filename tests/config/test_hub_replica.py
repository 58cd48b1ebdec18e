"""A hub and its replicas as real processes on loopback: following, the hub going away and
coming back, a replica killed mid-apply, compaction, canaries, and refused writes."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import httpx

from appliance.store import Store
from tests.config.conftest import (
    KEY,
    config_health,
    put_rules,
    put_version,
    replica_token,
    status_of,
    wait_for,
)


def effective(process, key: str = KEY) -> httpx.Response:
    with process.client(process.token) as http:
        return http.get(f"/api/v1/config/{key}")


def caught_up(replica, hub, timeout: float = 30.0) -> dict:
    revision = status_of(hub)["revision"]
    return wait_for(
        lambda: (s := status_of(replica))["revision"] == revision and s["lag"] == 0 and s,
        timeout,
        f"replica at hub revision {revision}",
    )


def test_a_replica_follows_keeps_serving_while_the_hub_is_down_and_catches_up(
    start_hub, start_replica
):
    hub = start_hub()
    with hub.client(hub.token) as http:
        put_version(http, "one")
    replica = start_replica(hub.url, replica_token(hub), labels={"site": "a"})
    caught_up(replica, hub)
    assert effective(replica).text == "one"

    with hub.client(hub.token) as http:
        put_version(http, "two")
        put_version(http, "three", key="acme/pump/prod/other")
    status = caught_up(replica, hub)
    assert effective(replica).text == "two"
    assert effective(replica, "acme/pump/prod/other").text == "three"
    assert status["connected"] is True and status["error"] is None
    assert status["mode"] == "replica" and status["box"]["labels"]["site"] == "a"
    assert status["last_sync"] is not None and status["upstream"] == hub.url
    assert config_health(replica)["status"] == "ok"

    hub.stop()
    wait_for(lambda: status_of(replica)["connected"] is False, 10, "replica offline")
    status = status_of(replica)
    assert status["error"]["code"] in ("upstream_unreachable", "upstream_unavailable")
    assert status["revision"] == 3 and status["upstream_revision"] == 3
    health = config_health(replica)
    assert health["status"] == "degraded", health  # degraded, never down: it still serves
    whole = httpx.get(f"{replica.url}/api/v1/health", timeout=5).json()
    assert whole["status"] == "degraded"
    assert effective(replica).text == "two"  # reads are served from its own store

    hub = start_hub(hub.data_dir, port=hub.port)
    with hub.client(hub.token) as http:
        put_version(http, "four")
    status = caught_up(replica, hub)
    assert effective(replica).text == "four"
    assert status["connected"] is True and status["error"] is None
    assert config_health(replica)["status"] == "ok"
    log = replica.log()
    assert log.count("upstream offline") == 1, log  # once, not once per retry


def check_consistent(store_dir, hub_entries: list[dict]) -> int:
    """The replica's store after a SIGKILL: its head, log, keys and versions agree, and
    its log is the hub's up to its head. Returns its revision."""
    store = Store.open(store_dir, readonly=True)
    try:
        head = store.get("config_meta", b"head") or {"revision": 0, "compacted_through": 0}
        log = [entry for _, entry in store.scan("config_log")]
        keys = {raw.decode(): record for raw, record in store.scan("config_keys")}
        stored = store.scan("config_versions")
        versions = Counter(raw.split(b"\x00")[0].decode() for raw, _ in stored)
    finally:
        store.close()
    revision = head["revision"]
    assert log == hub_entries[:revision]  # every entry up to the head, nothing beyond
    written = Counter(e["key"] for e in log if e["op"] == "version")
    assert {k: r["latest"] for k, r in keys.items()} == dict(written)
    assert versions == written  # every version up to the head, and none beyond
    assert all(r["revision"] <= revision for r in keys.values())
    return revision


def feed_of(hub) -> list[dict]:
    with hub.client(hub.token) as http:
        page = http.get("/api/v1/config/log", params={"after": 0, "limit": 1000}).json()
    return page["entries"]


def kill(process) -> None:
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait()


def test_a_replica_killed_mid_apply_restarts_at_a_revision_boundary(start_hub, start_replica):
    hub = start_hub()
    token = replica_token(hub)
    replica = start_replica(hub.url, token)
    total = 300

    # Killed while it follows a stream of writes (several threads, so pages of several).
    def write(offset: int) -> None:
        with hub.client(hub.token) as http:
            for n in range(offset, total, 4):
                put_version(http, f"content {n}", key=f"acme/pump/prod/k{n % 7}")

    writers = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for writer in writers:
        writer.start()
    try:
        wait_for(lambda: status_of(replica)["revision"] >= 40, 30, "the replica applying")
        kill(replica)
    finally:
        for writer in writers:
            writer.join()
    hub_entries = feed_of(hub)
    assert len(hub_entries) == total
    revision = check_consistent(replica.data_dir / "store", hub_entries)
    assert 40 <= revision < total

    # Killed as it starts applying the rest, one page of 300 - revision entries: it is
    # found before that page or after it, never inside.
    replica = start_replica(hub.url, token, data_dir=replica.data_dir, wait=False)
    started = f"replica of {hub.url} from revision {revision}\n"  # resumed from its head
    wait_for(lambda: started in replica.log(), 60, "the follower started")
    kill(replica)
    again = check_consistent(replica.data_dir / "store", hub_entries)
    assert again in (revision, total)

    replica = start_replica(hub.url, token, data_dir=replica.data_dir)
    assert f"replica of {hub.url} from revision {again}\n" in replica.log()
    status = caught_up(replica, hub)
    assert status["revision"] == total
    check_consistent_snapshot(replica, hub)


def check_consistent_snapshot(replica, hub) -> None:
    with hub.client(hub.token) as http:
        expected = http.get("/api/v1/config/snapshot").json()
    with replica.client(replica.token) as http:
        got = http.get("/api/v1/config/snapshot").json()
    assert got == expected


def test_a_replica_behind_a_compacted_log_installs_a_snapshot_then_follows(
    start_hub, start_replica
):
    hub = start_hub(env={"APPLIANCE_CONFIG_LOG_RETENTION": "10"})
    with hub.client(hub.token) as http:
        for n in range(14):
            put_version(http, f"v{n}", key=f"acme/pump/prod/k{n % 3}")
        put_rules(http, [{"version": 2, "priority": 0}], key="acme/pump/prod/k0")
        assert http.get("/api/v1/config/status").json()["compacted_through"] == 5
    replica = start_replica(hub.url, replica_token(hub))
    status = caught_up(replica, hub)
    assert status["revision"] == 15 and status["compacted_through"] == 15
    assert "installed its snapshot at revision 15" in replica.log()
    check_consistent_snapshot(replica, hub)
    assert effective(replica, "acme/pump/prod/k0").text == "v3"  # version 2 of k0

    with hub.client(hub.token) as http:
        put_version(http, "after the snapshot", key="acme/pump/prod/k1")
    status = caught_up(replica, hub)
    assert status["revision"] == 16
    assert effective(replica, "acme/pump/prod/k1").text == "after the snapshot"
    assert replica.log().count("installed its snapshot") == 1


def test_canary_by_labels_and_writes_refused_on_replicas(start_hub, start_replica):
    hub = start_hub()
    with hub.client(hub.token) as http:
        put_version(http, "stable")
        put_version(http, "canary")
        put_rules(
            http,
            [
                {"labels": {"site": "b"}, "version": 2, "priority": 10},
                {"labels": {}, "version": 1, "priority": 0},
            ],
        )
    token = replica_token(hub)
    site_a = start_replica(hub.url, token, labels={"site": "a"})
    site_b = start_replica(hub.url, token, labels={"site": "b"})
    caught_up(site_a, hub)
    caught_up(site_b, hub)
    assert (effective(site_a).text, effective(site_b).text) == ("stable", "canary")
    assert effective(site_b).headers["X-Config-Version"] == "2"

    with hub.client(hub.token) as http:  # move the canary to site a
        put_rules(
            http,
            [
                {"labels": {"site": "a"}, "version": 2, "priority": 10},
                {"labels": {}, "version": 1, "priority": 0},
            ],
        )
    caught_up(site_a, hub)
    caught_up(site_b, hub)
    assert (effective(site_a).text, effective(site_b).text) == ("canary", "stable")

    for replica in (site_a, site_b):
        with replica.client(replica.token) as http:
            refused = [
                http.post(
                    f"/api/v1/config/{KEY}/versions", json={"format": "text", "content": "x"}
                ),
                http.put(f"/api/v1/config/{KEY}/releases", json={"rules": []}),
            ]
        for response in refused:
            assert response.status_code == 409, response.text
            assert response.json()["code"] == "read_only_replica"
            assert hub.url in response.json()["detail"]
    assert status_of(site_a)["revision"] == status_of(hub)["revision"]

    began = time.monotonic()  # a replica stops promptly in the middle of a long poll
    assert site_a.stop(signal.SIGTERM) == 0
    assert time.monotonic() - began < 10
