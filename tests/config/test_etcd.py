"""etcd as the config's upstream, against a real etcd and real appliance processes.

Publishing goes through `publish_version`/`publish_rules` (what `appliance config put
--etcd` uses); the replica is `python -m appliance run` with `upstream_kind = etcd`."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import trio

from appliance.config import Box, ConfigRepository
from appliance.config.errors import ConfigError, NotFound
from appliance.config.etcd import EtcdFollower, publish_rules, publish_version
from appliance.config.etcd_layout import release_path, version_path
from appliance.config.keys import parse_key
from appliance.config.service import ConfigService
from appliance.store import Store
from tests.config.etcd_server import EtcdServer, b64, running_etcd
from tests.conftest import ApplianceProcess

PREFIX = "/fleet/config/"
KEY = "acme/pump/prod/limits"
WAIT_S = 30.0


@pytest.fixture
def etcd(tmp_path) -> Iterator[EtcdServer]:
    yield from running_etcd(tmp_path)


def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not in {timeout} s (last: {last!r})")


def start_replica(start_appliance, etcd: EtcdServer, data_dir=None) -> ApplianceProcess:
    env = {
        "APPLIANCE_CONFIG_MODE": "replica",
        "APPLIANCE_CONFIG_UPSTREAM": etcd.url,
        "APPLIANCE_CONFIG_UPSTREAM_KIND": "etcd",
        "APPLIANCE_CONFIG_ETCD_PREFIX": PREFIX,
    }
    return start_appliance(data_dir, env=env)


def get(replica: ApplianceProcess, path: str) -> httpx.Response:
    with replica.client(replica.token) as http:
        return http.get(path)


def status(replica: ApplianceProcess) -> dict[str, Any]:
    response = get(replica, "/api/v1/config/status")
    assert response.status_code == 200, response.text
    return response.json()


def content(replica: ApplianceProcess, key: str = KEY) -> str:
    response = get(replica, f"/api/v1/config/{key}")
    assert response.status_code == 200, response.text
    return response.text


def etcd_keys(etcd: EtcdServer) -> dict[str, Any]:
    """The config as etcd holds it, in the shape of a snapshot's keys (for comparing)."""
    body = {"key": b64(PREFIX), "range_end": b64(PREFIX[:-1] + "0")}
    kvs = etcd.post("/v3/kv/range", body).get("kvs", [])
    found: dict[str, Any] = {}
    for kv in kvs:
        path = base64.b64decode(kv["key"]).decode()[len(PREFIX) :]
        kind, _, rest = path.partition("/")
        key, _, number = rest.rpartition("/")
        if kind == "versions" and not (len(number) == 10 and number.isdigit()):
            continue  # not in the layout: the replica ignores it too
        value = json.loads(base64.b64decode(kv["value"]))
        if kind == "versions":
            found.setdefault(key, {"versions": [], "rules": []})["versions"].append(value)
        else:
            found.setdefault(rest, {"versions": [], "rules": []})["rules"] = value["rules"]
    return found


def replica_keys(replica: ApplianceProcess) -> dict[str, Any]:
    snapshot = get(replica, "/api/v1/config/snapshot").json()
    return {
        item["key"]: {"versions": item["versions"], "rules": item["rules"]}
        for item in snapshot["keys"]
    }


def consistent(replica: ApplianceProcess, etcd: EtcdServer) -> bool:
    return replica_keys(replica) == etcd_keys(etcd)


# Publishing.


def test_publish_numbers_versions_and_validates(etcd):
    assert publish_version(etcd.url, PREFIX, KEY, "json", '{"limit": 1}', author="ops") == 1
    assert publish_version(etcd.url, PREFIX, KEY, "toml", "limit = 2", comment="two") == 2
    publish_rules(etcd.url, PREFIX, KEY, [{"version": 1, "priority": 0}])
    held = etcd_keys(etcd)[KEY]
    assert [(v["number"], v["format"], v["comment"]) for v in held["versions"]] == [
        (1, "json", ""),
        (2, "toml", "two"),
    ]
    assert held["rules"] == [{"labels": {}, "version": 1, "priority": 0}]
    assert version_path(PREFIX, parse_key(KEY), 2).decode().endswith("/0000000002")
    assert release_path(PREFIX, parse_key(KEY)).decode() == f"{PREFIX}releases/{KEY}"

    before = etcd.revision()
    with pytest.raises(ConfigError) as caught:
        publish_version(etcd.url, PREFIX, KEY, "json", "{not json")
    assert caught.value.code == "content_does_not_parse"
    with pytest.raises(ConfigError) as caught:
        publish_rules(etcd.url, PREFIX, KEY, [{"version": 3, "priority": 0}])
    assert caught.value.code == "unknown_version"
    with pytest.raises(ConfigError) as caught:
        publish_rules(etcd.url, PREFIX, KEY, [{"version": 1, "priority": 0}] * 2)
    assert caught.value.code == "duplicate_priority"
    with pytest.raises(NotFound):
        publish_rules(etcd.url, PREFIX, "acme/pump/prod/nothing", [])
    assert etcd.revision() == before  # nothing refused was written


def test_concurrent_publishers_each_get_their_own_number(etcd):
    numbers: list[int] = []

    def publish(worker: int) -> None:
        for n in range(3):
            numbers.append(publish_version(etcd.url, PREFIX, KEY, "text", f"{worker}.{n}"))

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(numbers) == list(range(1, 19))


def test_publish_to_an_unreachable_etcd_says_so(etcd):
    etcd.stop()
    with pytest.raises(ConfigError) as caught:
        publish_version(etcd.url, PREFIX, KEY, "text", "x")
    assert caught.value.code == "etcd_unreachable"


# Following.


def test_replica_syncs_follows_and_resumes(start_appliance, etcd):
    publish_version(etcd.url, PREFIX, KEY, "json", '{"limit": 1}')
    publish_version(etcd.url, PREFIX, KEY, "json", '{"limit": 2}')
    publish_rules(etcd.url, PREFIX, KEY, [{"version": 1, "priority": 0}])
    etcd.put("/elsewhere/unrelated", "not ours")  # etcd revisions are not ours

    replica = start_replica(start_appliance, etcd)
    # The first sync is one snapshot: our revision 1.
    wait_for(lambda: status(replica)["revision"] == 1, "initial sync")
    assert consistent(replica, etcd)
    assert content(replica) == '{"limit": 1}'
    first = status(replica)
    assert (first["upstream_kind"], first["connected"], first["lag"]) == ("etcd", True, 0)
    assert first["etcd_prefix"] == PREFIX and first["etcd_revision"] == etcd.revision()

    # Changes arrive through the watch, one revision each.
    publish_version(etcd.url, PREFIX, KEY, "json", '{"limit": 3}')
    publish_rules(etcd.url, PREFIX, KEY, [{"version": 3, "priority": 0}])
    wait_for(lambda: status(replica)["revision"] == 3, "watched changes")
    assert content(replica) == '{"limit": 3}'
    assert consistent(replica, etcd)
    log = get(replica, "/api/v1/config/log?after=1").json()
    assert [(e["revision"], e["op"]) for e in log["entries"]] == [(2, "version"), (3, "rules")]

    # Stopped, then started again: it resumes after the etcd revision it had reached.
    replica.stop()
    publish_version(etcd.url, PREFIX, KEY, "text", "four")
    replica = start_replica(start_appliance, etcd, replica.data_dir)
    wait_for(lambda: status(replica)["revision"] == 4, "resumed")
    resumed = status(replica)
    assert resumed["compacted_through"] == 1  # no snapshot since the first: no re-list
    log = get(replica, "/api/v1/config/log?after=3").json()
    assert [(e["revision"], e["op"], e["version"]["number"]) for e in log["entries"]] == [
        (4, "version", 4)
    ]
    assert consistent(replica, etcd)

    # A restart with nothing new applies nothing twice.
    replica.stop()
    replica = start_replica(start_appliance, etcd, replica.data_dir)
    wait_for(lambda: status(replica)["connected"], "connected again")
    time.sleep(0.5)
    assert status(replica)["revision"] == 4


def test_compaction_while_stopped_makes_the_replica_list_again(start_appliance, etcd):
    publish_version(etcd.url, PREFIX, KEY, "json", '{"limit": 1}')
    replica = start_replica(start_appliance, etcd)
    wait_for(lambda: status(replica)["revision"] == 1, "initial sync")
    replica.stop()

    for n in (2, 3, 4):
        publish_version(etcd.url, PREFIX, KEY, "json", f'{{"limit": {n}}}')
    publish_rules(etcd.url, PREFIX, KEY, [{"version": 3, "priority": 1}])
    etcd.compact()

    replica = start_replica(start_appliance, etcd, replica.data_dir)
    wait_for(lambda: consistent(replica, etcd), "consistent after the re-list")
    listed = status(replica)
    # Everything since is one snapshot at the next revision of ours.
    assert (listed["revision"], listed["compacted_through"]) == (2, 2)
    assert content(replica) == '{"limit": 3}'

    publish_version(etcd.url, PREFIX, KEY, "json", '{"limit": 5}')  # and it follows on
    wait_for(lambda: status(replica)["revision"] == 3, "watched after the re-list")
    assert consistent(replica, etcd)


def test_etcd_down_replica_serves_and_catches_up(start_appliance, etcd):
    publish_version(etcd.url, PREFIX, KEY, "json", '{"limit": 1}')
    replica = start_replica(start_appliance, etcd)
    wait_for(lambda: status(replica)["revision"] == 1, "initial sync")

    etcd.stop()
    offline = wait_for(
        lambda: (s := status(replica)) and not s["connected"] and s, "reported offline"
    )
    assert offline["error"]["code"].startswith("etcd_")
    health = wait_for(
        lambda: (h := get(replica, "/api/v1/health")).status_code == 503 and h, "degraded"
    )
    assert health.json()["status"] == "degraded"
    assert health.json()["components"]["config"]["status"] == "degraded"
    assert content(replica) == '{"limit": 1}'  # still serving what it has

    etcd.start()
    publish_version(etcd.url, PREFIX, KEY, "json", '{"limit": 2}')
    wait_for(lambda: status(replica)["revision"] == 2, "caught up")
    back = status(replica)
    assert back["connected"] and back["error"] is None
    assert get(replica, "/api/v1/health").status_code == 200
    assert consistent(replica, etcd)


def test_a_bad_record_in_etcd_stops_applying_until_fixed(start_appliance, etcd):
    publish_version(etcd.url, PREFIX, KEY, "json", '{"limit": 1}')
    replica = start_replica(start_appliance, etcd)
    wait_for(lambda: status(replica)["revision"] == 1, "initial sync")

    bad_path = version_path(PREFIX, parse_key(KEY), 2).decode()
    etcd.put(bad_path, '{"number": 2, "format": "json", "content": "{"}')
    failed = wait_for(lambda: status(replica)["error"], "reported the bad record")
    assert failed["code"] == "feed_malformed" and "0000000002" in failed["message"]
    assert status(replica)["revision"] == 1
    assert content(replica) == '{"limit": 1}'
    etcd.put("/fleet/config/versions/acme/pump/prod/other/1", "not in the layout")  # ignored

    # Fixed in etcd (a good version 2 written by hand): the replica lists again, goes on.
    good = {
        "number": 2,
        "format": "json",
        "content": '{"limit": 2}',
        "sha256": hashlib.sha256(b'{"limit": 2}').hexdigest(),
        "author": "ops",
        "comment": "fixed",
        "created_at": 1.0,
    }
    etcd.put(bad_path, json.dumps(good))
    wait_for(lambda: status(replica)["error"] is None and consistent(replica, etcd), "fixed")
    assert status(replica)["revision"] == 2


# The follower in process (a real store, a real etcd): where it resumes and when it lists.


@pytest.fixture
async def replica_service(tmp_path, nursery) -> AsyncIterator[ConfigService]:
    store = Store.open(tmp_path / "replica")
    await nursery.start(store.serve)
    repository = ConfigRepository(store, max_content_bytes=4096, log_retention=100)
    yield ConfigService(repository, Box("box-1", {}), mode="replica")
    nursery.cancel_scope.cancel()
    store.close()


async def follow_until(service: ConfigService, etcd: EtcdServer, check, prefix=PREFIX) -> None:
    """Run a follower until `check()` holds (at most WAIT_S), then stop it."""
    follower = EtcdFollower(service, etcd.url, prefix, max_content_bytes=4096, idle_s=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(follower.run)
        with trio.fail_after(WAIT_S):
            # Polls: "connected" is a flag of the follower, not an event to wait on.
            while not (follower.status.connected and check()):  # noqa: ASYNC110
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def publish(etcd: EtcdServer, content: str, key: str = KEY) -> int:
    return await trio.to_thread.run_sync(
        lambda: publish_version(etcd.url, PREFIX, key, "text", content)
    )


def head(service: ConfigService) -> dict[str, int]:
    return service.repository.head()


async def test_a_record_behind_the_store_makes_it_list_not_reapply(replica_service, etcd):
    """As after a crash between applying a change and recording the etcd revision."""
    await publish(etcd, "one")
    await follow_until(replica_service, etcd, lambda: head(replica_service)["revision"] == 1)
    record = replica_service.repository.extra("etcd")
    assert record["revision"] == 1 and record["etcd_revision"] == etcd.revision()

    await replica_service.repository.set_extra("etcd", {**record, "revision": 0})
    await follow_until(replica_service, etcd, lambda: True)
    # Listed, found the same config: nothing installed, the record is right again.
    assert head(replica_service) == {"revision": 1, "compacted_through": 1}
    assert replica_service.repository.extra("etcd")["revision"] == 1

    await replica_service.repository.set_extra("etcd", {**record, "revision": 0})
    await publish(etcd, "two")
    await follow_until(replica_service, etcd, lambda: head(replica_service)["revision"] == 2)
    assert head(replica_service) == {"revision": 2, "compacted_through": 2}  # one snapshot
    assert [v.content for v in replica_service.repository.versions(parse_key(KEY))] == [
        "one",
        "two",
    ]


async def test_another_prefix_or_a_reset_etcd_is_listed_again(replica_service, etcd, tmp_path):
    await publish(etcd, "one")
    await publish(etcd, "two")
    await follow_until(replica_service, etcd, lambda: head(replica_service)["revision"] == 1)

    # The same etcd under another prefix: that prefix's config (none) replaces ours.
    await follow_until(
        replica_service,
        etcd,
        lambda: replica_service.repository.snapshot()["keys"] == [],
        prefix="/another/",
    )
    assert head(replica_service)["revision"] == 2
    await follow_until(replica_service, etcd, lambda: head(replica_service)["revision"] == 3)

    # etcd wiped and started again: its revisions start over, below the one we recorded.
    await trio.to_thread.run_sync(etcd.stop)
    shutil.rmtree(etcd.data_dir)
    await trio.to_thread.run_sync(etcd.start)
    await publish(etcd, "uno")
    assert etcd.revision() < replica_service.repository.extra("etcd")["etcd_revision"]
    await follow_until(replica_service, etcd, lambda: head(replica_service)["revision"] == 4)
    assert [v.content for v in replica_service.repository.versions(parse_key(KEY))] == ["uno"]
