"""The store: group commit, isolation of failing writes, growth, scans, backup, schema."""

from __future__ import annotations

import lmdb
import pytest
import trio

from appliance.store import (
    Store,
    StoreClosed,
    StoreFull,
    StoreVersionError,
    pack_key,
)
from appliance.store.migrations import CURRENT_VERSION, VERSION_KEY

MiB = 1 << 20


@pytest.fixture
def store(tmp_path):
    opened = Store.open(tmp_path / "store", map_size=MiB, max_map_size=64 * MiB)
    yield opened
    opened.close()


async def test_many_writers_share_few_commits(store):
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        results = {}

        async def writer(i):
            results[i] = await store.write(
                lambda txn: txn.put("kv", pack_key("k", i), {"i": i}) or i * 2
            )

        async with trio.open_nursery() as writers:
            for i in range(300):
                writers.start_soon(writer, i)
        nursery.cancel_scope.cancel()
    assert results == {i: i * 2 for i in range(300)}
    assert [v["i"] for _, v in store.scan("kv", pack_key("k"))] == list(range(300))
    stats = store.stats()
    assert stats["writes"] == 300
    assert stats["commits"] < 300  # batched: fewer fsyncs than writes


async def test_a_failing_write_fails_only_its_caller(store):
    def good(i):
        return lambda txn: txn.put("kv", pack_key(i), "ok")

    def bad(txn):
        txn.put("kv", pack_key(999), "must not survive")
        raise ValueError("refused")

    outcomes = {}

    async def run(name, fn):
        try:
            outcomes[name] = await store.write(fn)
        except ValueError as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        async with trio.open_nursery() as writers:
            for i in range(10):
                writers.start_soon(run, i, good(i))
            writers.start_soon(run, "bad", bad)
        nursery.cancel_scope.cancel()
    assert isinstance(outcomes.pop("bad"), ValueError)
    assert all(v is None for v in outcomes.values())
    assert store.get("kv", pack_key(999)) is None
    assert len(store.scan("kv")) == 10


async def test_map_grows_automatically(store):
    start = store.stats()["map_size"]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        for chunk in range(40):
            await store.write(
                lambda txn, c=chunk: [txn.put("kv", pack_key(c, i), "x" * 1000) for i in range(50)]
            )
        nursery.cancel_scope.cancel()
    assert store.stats()["map_size"] > start
    assert len(store.scan("kv")) == 2000


async def test_full_at_max_map_size(tmp_path):
    small = Store.open(tmp_path / "s", map_size=MiB, max_map_size=2 * MiB)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(small.serve)
            await small.write(lambda txn: txn.put("kv", pack_key(0), "kept"))
            with pytest.raises(StoreFull):
                await small.write(
                    lambda txn: [txn.put("kv", pack_key(1, i), "y" * 4000) for i in range(2000)]
                )
            # The store still works and kept what it had.
            await small.write(lambda txn: txn.put("kv", pack_key(2), "after"))
            nursery.cancel_scope.cancel()
        assert small.get("kv", pack_key(0)) == "kept"
        assert small.get("kv", pack_key(2)) == "after"
        assert small.scan("kv", pack_key(1)) == []
    finally:
        small.close()


def test_scan_ranges_and_order(store):
    store.write_now(lambda txn: [txn.put("kv", pack_key("a", i), i) for i in range(1, 11)])
    store.write_now(lambda txn: txn.put("kv", pack_key("b", 1), "other prefix"))
    prefix = pack_key("a")
    assert [v for _, v in store.scan("kv", prefix)] == list(range(1, 11))
    assert [v for _, v in store.scan("kv", prefix, after=pack_key("a", 7))] == [8, 9, 10]
    assert [v for _, v in store.scan("kv", prefix, reverse=True, limit=3)] == [10, 9, 8]
    assert [v for _, v in store.scan("kv", prefix, before=pack_key("a", 4), reverse=True)] == [
        3,
        2,
        1,
    ]
    assert [v for _, v in store.scan("kv", prefix, limit=2)] == [1, 2]


def test_backup_is_a_compacted_copy_that_opens(store, tmp_path):
    store.write_now(lambda txn: [txn.put("kv", pack_key(i), "v" * 500) for i in range(500)])
    store.write_now(lambda txn: [txn.delete("kv", pack_key(i)) for i in range(400)])
    target = store.backup_to_dir(tmp_path / "backup")
    assert target.name == "data.mdb"
    assert target.stat().st_size < (store.path / "data.mdb").stat().st_size
    copy = Store.open(tmp_path / "backup", readonly=True)
    try:
        assert [k for k, _ in copy.scan("kv")] == [pack_key(i) for i in range(400, 500)]
    finally:
        copy.close()


def test_schema_is_migrated_and_newer_schemas_refused(tmp_path):
    path = tmp_path / "store"
    first = Store.open(path)
    assert first.get("meta", VERSION_KEY) == CURRENT_VERSION
    store_id = first.get("meta", pack_key("store_id"))
    first.write_now(lambda txn: txn.put("meta", VERSION_KEY, CURRENT_VERSION + 1))
    first.close()
    with pytest.raises(StoreVersionError):
        Store.open(path)
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True, db=env.open_db(b"meta")) as txn:
        txn.delete(VERSION_KEY)
    env.close()
    again = Store.open(path)  # version 0 again: migrations rerun from the start
    assert again.get("meta", VERSION_KEY) == CURRENT_VERSION
    assert again.get("meta", pack_key("store_id")) != store_id
    again.close()


async def test_closed_store_refuses_writes(tmp_path):
    store = Store.open(tmp_path / "store")
    store.close()
    with pytest.raises(StoreClosed):
        await store.write(lambda txn: None)
    with pytest.raises(StoreClosed):
        store.get("kv", b"x")


def test_another_process_may_open_the_same_environment(store, tmp_path):
    import subprocess
    import sys

    store.write_now(lambda txn: txn.put("kv", pack_key("from-parent"), 1))
    code = (
        "import sys; from pathlib import Path; from appliance.store import Store, pack_key\n"
        "s = Store.open(Path(sys.argv[1]))\n"
        "assert s.get('kv', pack_key('from-parent')) == 1\n"
        "s.write_now(lambda t: t.put('kv', pack_key('from-child'), 2)); s.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, str(store.path)], check=True, timeout=60)
    assert store.get("kv", pack_key("from-child")) == 2
