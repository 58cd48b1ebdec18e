"""The config in a real store: revisions, atomic changes, compaction, replica apply."""

from __future__ import annotations

import pytest
import trio

from appliance.config import Box, ConfigError, ConfigRepository, parse_key
from appliance.config.errors import FeedError, Gone, NotFound, ReadOnly
from appliance.config.service import ConfigService
from appliance.store import Store

KEY = parse_key("acme/pump/prod/limits")


def service_on(store: Store, *, mode: str = "hub", retention: int = 100, labels=None):
    repository = ConfigRepository(store, max_content_bytes=4096, log_retention=retention)
    return ConfigService(repository, Box("box-1", labels or {}), mode=mode)


async def test_versions_number_up_and_every_change_is_a_revision(stores):
    hub = service_on(await stores("hub"))
    first, r1 = await hub.add_version(KEY, "json", '{"a": 1}', author="ops")
    second, r2 = await hub.add_version(KEY, "toml", "a = 2", author="ops", comment="two")
    _, r3 = await hub.set_rules(KEY, [{"version": 1, "priority": 0}])
    assert (first.number, second.number, r1, r2, r3) == (1, 2, 1, 2, 3)
    assert hub.effective(KEY)[0].content == '{"a": 1}'  # rules decide once there are any
    entries, head = hub.repository.log_after(0, 10)
    assert [e["op"] for e in entries] == ["version", "version", "rules"]
    assert head == {"revision": 3, "compacted_through": 0}
    assert hub.notifier.revision == 3
    assert [v.number for v in hub.repository.versions(KEY)] == [1, 2]


async def test_refused_writes_change_nothing(stores):
    hub = service_on(await stores("hub"))
    with pytest.raises(NotFound):
        await hub.set_rules(KEY, [{"version": 1, "priority": 0}])
    await hub.add_version(KEY, "text", "one", author="ops")
    for bad in ([{"version": 9, "priority": 0}], [{"version": 1, "priority": 1}] * 2):
        with pytest.raises(ConfigError):
            await hub.set_rules(KEY, bad)
    with pytest.raises(ConfigError) as caught:
        await hub.add_version(KEY, "json", "{", author="ops")
    assert caught.value.code == "content_does_not_parse"
    assert hub.repository.head()["revision"] == 1
    assert len(hub.repository.versions(KEY)) == 1


async def test_the_log_is_compacted_and_old_positions_are_gone(stores):
    hub = service_on(await stores("hub"), retention=5)
    for i in range(12):
        await hub.add_version(KEY, "text", f"v{i}", author="ops")
    head = hub.repository.head()
    assert head == {"revision": 12, "compacted_through": 7}
    entries, _ = hub.repository.log_after(7, 100)
    assert [e["revision"] for e in entries] == [8, 9, 10, 11, 12]
    with pytest.raises(Gone) as caught:
        hub.repository.log_after(6, 100)
    assert caught.value.extra["compacted_through"] == 7


async def test_a_replica_applies_all_or_nothing_and_refuses_writes(stores):
    hub = service_on(await stores("hub"))
    replica = service_on(await stores("replica"), mode="replica")
    for i in range(3):
        await hub.add_version(KEY, "text", f"v{i}", author="ops")
    await hub.set_rules(KEY, [{"version": 2, "priority": 0}])
    entries, _ = hub.repository.log_after(0, 100)
    broken = [*entries[:3], {**entries[3], "checksum": "0" * 64}]
    with pytest.raises(FeedError) as caught:
        await replica.apply(broken)
    assert caught.value.code == "feed_bad_checksum"
    assert replica.repository.head()["revision"] == 0  # not even the good ones
    with pytest.raises(FeedError):
        await replica.apply(entries[1:])  # starts at 2: out of order
    assert await replica.apply(entries) == 4
    assert replica.effective(KEY)[0].content == "v1"
    assert replica.repository.snapshot() == hub.repository.snapshot()
    with pytest.raises(ReadOnly):
        await replica.add_version(KEY, "text", "local", author="ops")


async def test_a_snapshot_replaces_everything(stores):
    hub = service_on(await stores("hub"), retention=2)
    other = parse_key("acme/pump/prod/other")
    for i in range(4):
        await hub.add_version(KEY, "text", f"v{i}", author="ops")
    await hub.add_version(other, "yaml", "a: 1", author="ops")
    replica = service_on(await stores("replica"), mode="replica")
    assert await replica.install_snapshot(hub.repository.snapshot()) == 5
    assert replica.repository.snapshot() == hub.repository.snapshot()
    assert replica.repository.head() == {"revision": 5, "compacted_through": 5}
    await hub.add_version(KEY, "text", "v4", author="ops")
    entries, _ = hub.repository.log_after(5, 10)
    assert await replica.apply(entries) == 6
    with pytest.raises(FeedError):
        await replica.install_snapshot({"revision": 1, "keys": [{"key": "bad key"}]})
    assert replica.repository.head()["revision"] == 6


async def test_changes_after_reads_memory_then_the_log(stores):
    hub = service_on(await stores("hub"))
    for i in range(3):
        await hub.add_version(KEY, "text", f"v{i}", author="ops")
    assert [c.revision for c in hub.changes_after(1)] == [2, 3]
    fresh = service_on(hub.repository._store)  # a restart: nothing in memory
    assert [c.revision for c in fresh.changes_after(0)] == [1, 2, 3]
    assert fresh.changes_after(3) == []


async def test_watchers_wake_on_a_change(stores):
    hub = service_on(await stores("hub"))
    woken: list[int] = []

    async def watcher() -> None:
        woken.append(await hub.notifier.wait_beyond(0))

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(watcher)
        await trio.sleep(0.01)
        assert woken == []
        await hub.add_version(KEY, "text", "v", author="ops")
    assert woken == [1] * 100
