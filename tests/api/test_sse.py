"""The watch stream's generator on a real store and a virtual clock: keep-alives after
exactly 15 s of silence, changes batched in order under a prefix, a reset for a watcher
the log has left behind, and a prompt end when the appliance stops."""

from __future__ import annotations

import json

import pytest
import trio

from appliance.api.sse import KEEPALIVE, KEEPALIVE_S, change_events
from appliance.config import Box, ConfigRepository, parse_key
from appliance.config.service import ConfigService
from appliance.store import Store


@pytest.fixture
async def config(tmp_path, nursery):
    store = Store.open(tmp_path / "store")
    await nursery.start(store.serve)
    repository = ConfigRepository(store, max_content_bytes=4096, log_retention=10)
    yield ConfigService(repository, Box("box-1"), mode="hub")
    nursery.cancel_scope.cancel()
    store.close()


def parse(chunk: bytes) -> list[dict]:
    events = []
    for block in chunk.decode().split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append({**fields, "data": json.loads(fields["data"])})
    return events


async def test_keepalive_then_changes_under_the_prefix_then_stop(config, autojump_clock):
    stopping = trio.Event()
    events = change_events(config, config.notifier.revision, "a/", stopping)
    began = trio.current_time()
    assert await events.__anext__() == KEEPALIVE
    assert trio.current_time() - began == KEEPALIVE_S

    for key in ("a/x/y/one", "b/x/y/other", "a/x/y/two"):
        await config.add_version(parse_key(key), "text", key, author="test")
    sent = parse(await events.__anext__())  # all that happened, in one write
    assert [(e["id"], e["event"], e["data"]["key"]) for e in sent] == [
        ("1", "change", "a/x/y/one"),
        ("3", "change", "a/x/y/two"),
    ]
    assert sent[1]["data"] == json.loads(config.changes_after(2)[0].event_json)

    async def stop_later() -> None:
        await trio.sleep(5)
        stopping.set()
        config.notifier.close()  # as the runtime does when the stop begins

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_later)
        began = trio.current_time()
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()
        assert trio.current_time() - began == 5


async def test_a_watcher_behind_the_compacted_log_is_reset(config, autojump_clock):
    key = parse_key("a/x/y/k")
    for n in range(14):
        await config.add_version(key, "json", json.dumps({"v": n}), author="test")
    assert config.repository.head() == {"revision": 14, "compacted_through": 4}
    # A service opened now remembers nothing: whatever a watcher missed comes from the log.
    fresh = ConfigService(config.repository, config.box, mode="hub")

    caught_up = change_events(fresh, 4, "", trio.Event())
    assert [int(e["id"]) for e in parse(await caught_up.__anext__())] == list(range(5, 15))
    await caught_up.aclose()

    behind = change_events(fresh, 2, "", trio.Event())
    chunk = await behind.__anext__()
    assert chunk.startswith(b"event: reset\ndata: ")
    (reset,) = parse(b"id: -\n" + chunk)
    assert reset["data"]["reason"] == "revision_compacted"
    assert reset["data"]["last_event_id"] == 2 and reset["data"]["compacted_through"] == 4
    with pytest.raises(StopAsyncIteration):
        await behind.__anext__()
