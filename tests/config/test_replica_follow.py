"""The follower driven in process, on a virtual clock: a hub's service in one real store,
a replica's in another, and between them an httpx MockTransport that answers the feed the
way the hub's routes do (and, when told to, the ways a broken upstream would)."""

from __future__ import annotations

import itertools
import logging
import random

import httpx
import pytest
import trio
from trio.testing import MockClock

from appliance.config import Box, ConfigRepository, parse_key
from appliance.config.errors import Gone
from appliance.config.feed import make_entry
from appliance.config.replica import Upstream, follow_appliance
from appliance.config.service import ConfigService
from appliance.runtime.configure import config_health, upstream_of
from appliance.settings import SettingsError
from appliance.settings.model import ConfigSettings
from appliance.store import Store

KEY = parse_key("acme/pump/prod/limits")
TOKEN = "apl_replica_secret"


def service_on(store: Store, *, mode: str, retention: int = 1000) -> ConfigService:
    repository = ConfigRepository(store, max_content_bytes=4096, log_retention=retention)
    return ConfigService(repository, Box("box-1", {}), mode=mode)


def problem(status: int, code: str, **extra) -> httpx.Response:
    body = {"status": status, "code": code, "detail": code, **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


class FakeHub:
    """The hub's feed routes over its service; `override(request)` may answer instead."""

    def __init__(self, hub: ConfigService) -> None:
        self.hub = hub
        self.requests: list[httpx.Request] = []
        self.override = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return problem(401, "unauthorized")
        if self.override is not None:
            answer = self.override(request)
            if answer is not None:
                return answer
        if request.url.path == "/api/v1/config/snapshot":
            return httpx.Response(200, json=self.hub.repository.snapshot())
        after = int(request.url.params["after"])
        limit = int(request.url.params["limit"])
        try:
            entries, head = self.hub.repository.log_after(after, limit)
            if not entries:
                with trio.move_on_after(float(request.url.params["wait"])):
                    await self.hub.notifier.wait_beyond(after)
                entries, head = self.hub.repository.log_after(after, limit)
        except Gone as exc:
            return problem(410, exc.code, **exc.extra)
        return httpx.Response(200, json={**head, "entries": entries})


@pytest.fixture
async def pair(stores, nursery):
    """(hub service, replica service, fake hub); the follower runs until the test ends."""
    hub = service_on(await stores("hub"), mode="hub", retention=10)
    replica = service_on(await stores("replica"), mode="replica")
    fake = FakeHub(hub)
    upstream = Upstream("http://hub.test", TOKEN, poll_wait_s=5.0, max_content_bytes=4096)
    transport = httpx.MockTransport(fake)
    await nursery.start(
        lambda task_status: follow_appliance(
            replica, upstream, rng=random.Random(7), transport=transport, task_status=task_status
        )
    )
    return hub, replica, fake


@pytest.fixture
def clock() -> MockClock:
    """Virtual time at 10x real time that also jumps ahead after 50 ms of idleness. Not
    the usual autojump at 0: the store commits in a worker thread, and while it does,
    trio would see every task blocked and jump the clock to the next deadline (a test's
    own `fail_after`, say)."""
    return MockClock(rate=10.0, autojump_threshold=0.05)


async def until(predicate, within: float = 60.0) -> None:
    # Polls every 10 ms of real time: time flows at the clock's rate meanwhile.
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - a condition on state, not an event
            await trio.sleep(0.1)


async def caught_up(replica: ConfigService, revision: int, within: float = 60.0) -> None:
    await until(lambda: replica.repository.head()["revision"] >= revision, within)


def contents(service: ConfigService) -> list:
    return [
        (k["key"], k["rules"], [(v["number"], v["content"]) for v in k["versions"]])
        for k in service.repository.snapshot()["keys"]
    ]


async def test_follows_the_hub_and_reports_it(pair, clock):
    hub, replica, _ = pair
    await hub.add_version(KEY, "text", "one", author="ops")
    await hub.add_version(KEY, "text", "two", author="ops")
    _, revision = await hub.set_rules(KEY, [{"version": 1, "priority": 0}])
    await caught_up(replica, revision)
    assert contents(replica) == contents(hub)
    assert replica.effective(KEY)[0].content == "one"
    await until(lambda: replica.follower.upstream_revision == revision)
    status = replica.status()
    assert status["connected"] is True and status["lag"] == 0 and status["error"] is None
    assert status["upstream_revision"] == 3 and status["link"] == "connected"
    assert config_health(replica).status == "ok"


async def test_a_compacted_place_in_the_log_is_caught_up_from_a_snapshot(stores, nursery):
    hub = service_on(await stores("hub"), mode="hub", retention=10)
    for n in range(25):
        await hub.add_version(KEY, "text", f"v{n}", author="ops")
    replica = service_on(await stores("replica"), mode="replica")
    fake = FakeHub(hub)
    upstream = Upstream("http://hub.test", TOKEN, poll_wait_s=0.2, max_content_bytes=4096)
    await nursery.start(
        lambda task_status: follow_appliance(
            replica, upstream, transport=httpx.MockTransport(fake), task_status=task_status
        )
    )
    await caught_up(replica, 25)
    assert replica.repository.head() == {"revision": 25, "compacted_through": 25}
    await hub.add_version(KEY, "text", "after", author="ops")  # and then it follows the log
    await caught_up(replica, 26)
    assert contents(replica) == contents(hub)
    paths = [r.url.path for r in fake.requests]
    assert paths.count("/api/v1/config/snapshot") == 1


async def test_bad_entries_are_never_applied_and_it_resumes_when_they_are_fixed(
    pair, clock, caplog
):
    hub, replica, fake = pair
    await hub.add_version(KEY, "text", "one", author="ops")
    await caught_up(replica, 1)

    tampered = {"bad": True}

    def tamper(request: httpx.Request):
        if not tampered["bad"]:
            return None
        entry = make_entry(2, str(KEY), "version", {"number": 2}, 1.0)
        if tampered["bad"] == "checksum":
            entry["checksum"] = "0" * 64
        else:
            entry = make_entry(3, str(KEY), "rules", [], 1.0)
        return httpx.Response(200, json={"revision": 3, "compacted_through": 0, "entries": [entry]})

    for kind, code in (("checksum", "feed_bad_checksum"), ("order", "feed_out_of_order")):
        tampered["bad"] = kind
        fake.override = tamper
        await until(lambda code=code: (replica.follower.error or {}).get("code") == code)
        assert replica.repository.head()["revision"] == 1  # nothing applied
        assert replica.effective(KEY)[0].content == "one"  # still serving
        assert config_health(replica).status == "degraded"
        assert replica.status()["connected"] is False
    asked = len(fake.requests)
    await trio.sleep(30)
    assert len(fake.requests) - asked < 12  # retried with backoff, not in a loop

    tampered["bad"] = False
    await hub.add_version(KEY, "text", "two", author="ops")
    await caught_up(replica, 2)
    await until(lambda: replica.follower.error is None)
    assert replica.effective(KEY)[0].content == "two"
    assert config_health(replica).status == "ok"
    errors = [r for r in caplog.records if r.name == "appliance.config.replica"]
    assert [r.levelno for r in errors].count(logging.ERROR) == 2  # once per error, not per retry


async def test_an_unreachable_upstream_is_retried_with_growing_waits(pair, clock, caplog):
    hub, replica, fake = pair
    down = {"now": True}
    times: list[float] = []

    def unreachable(request: httpx.Request):
        if down["now"]:
            times.append(trio.current_time())
            raise httpx.ConnectError("connection refused", request=request)
        return None

    fake.override = unreachable
    await trio.sleep(120)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] < 0.5 and max(gaps) <= 30.0 and gaps[-1] >= 15.0
    assert replica.follower.error["code"] == "upstream_unreachable"
    assert replica.status()["link"] == "offline" and "retry_at" in replica.status()
    health = config_health(replica)
    assert health.status == "degraded" and "connection refused" in health.detail
    warnings = [r for r in caplog.records if r.name == "appliance.config.replica"]
    assert len([r for r in warnings if r.levelno == logging.WARNING]) == 1

    down["now"] = False
    await hub.add_version(KEY, "text", "back", author="ops")
    await caught_up(replica, 1, within=45)
    await until(lambda: replica.follower.connected)


async def test_a_refused_token_is_an_error_retried_slowly(pair, clock):
    _, replica, fake = pair
    fake.override = lambda request: problem(403, "forbidden")
    await until(lambda: replica.follower.error is not None)
    assert replica.follower.error["code"] == "upstream_refused"
    asked = len(fake.requests)
    await trio.sleep(60)
    assert len(fake.requests) - asked <= 6


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (lambda: httpx.Response(200, content=b"<html>proxy login</html>"), "upstream_bad_response"),
        (lambda: httpx.Response(200, content=b"x" * (33 << 20)), "upstream_oversized"),
        (lambda: httpx.Response(404, json={}), "upstream_bad_response"),
        (lambda: httpx.Response(502, content=b"bad gateway"), "upstream_unavailable"),
    ],
)
async def test_garbage_is_an_error_not_a_crash(pair, clock, answer, code):
    hub, replica, fake = pair
    limits: list[int] = []

    def garbage(request: httpx.Request):
        limits.append(int(request.url.params.get("limit", 0)))
        return answer()

    fake.override = garbage
    await until(lambda: replica.follower.error is not None)
    assert replica.follower.error["code"] == code
    if code == "upstream_oversized":  # asked again for fewer entries before giving up
        assert limits[:5] == [500, 125, 31, 7, 1]
    fake.override = None
    await hub.add_version(KEY, "text", "fine", author="ops")
    await caught_up(replica, 1)


async def test_an_upstream_behind_this_replica_is_reported_not_followed(pair, clock):
    hub, replica, fake = pair
    await hub.add_version(KEY, "text", "one", author="ops")
    await hub.add_version(KEY, "text", "two", author="ops")
    await caught_up(replica, 2)
    fake.override = lambda request: httpx.Response(
        200, json={"revision": 0, "compacted_through": 0, "entries": []}
    )
    await until(lambda: replica.follower.error is not None)
    assert replica.follower.error["code"] == "upstream_behind"
    assert replica.repository.head()["revision"] == 2


@pytest.mark.parametrize(
    ("upstream", "token", "field"),
    [
        ("ftp://hub.test", "t", "config.upstream"),
        ("hub.test:8443", "t", "config.upstream"),
        ("http://", "t", "config.upstream"),
        ("http://hub.test", "", "config.upstream_token"),
    ],
)
def test_a_replica_needs_an_http_upstream_and_a_token(upstream, token, field):
    settings = ConfigSettings(mode="replica", upstream=upstream, upstream_token=token)
    with pytest.raises(SettingsError) as caught:
        upstream_of(settings)
    assert caught.value.key == field


def test_the_upstream_from_settings():
    settings = ConfigSettings(
        mode="replica", upstream=" https://hub.test:8443/ ", upstream_token="t", poll_wait_s=3
    )
    assert upstream_of(settings) == Upstream("https://hub.test:8443", "t", 3, 1 << 20)
