"""The config HTTP API against the real process: versions in every format, the effective
content with ETag/304 and long polls, release rules (labels, percent canaries) and
explain, bad input refused precisely with nothing stored, the SSE watch (order, prefix,
resume, compaction, stop), and writes refused on a replica."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ApplianceProcess

LABELS = {"site": "north", "tier": "canary"}
MAX_CONTENT = 4096
FORMATS = {
    "json": ('{"rate": 5, "names": ["a", "b"]}', "application/json"),
    "toml": ('rate = 5\nnames = ["a", "b"]\n', "application/toml"),
    "yaml": ("rate: 5\nnames:\n  - a\n  - b\n", "application/yaml"),
    "text": ("rate=5 ✓\nnames=a,b\n", "text/plain; charset=utf-8"),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[ApplianceProcess]:
    env = {
        "APPLIANCE_RATELIMIT_RATE": "10000",
        "APPLIANCE_RATELIMIT_BURST": "10000",
        "APPLIANCE_DEVICE_LABELS": json.dumps(LABELS),
        "APPLIANCE_CONFIG_MAX_CONTENT_BYTES": str(MAX_CONTENT),
    }
    process = ApplianceProcess(tmp_path_factory.mktemp("config") / "data", env=env)
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture
def http(hub) -> Iterator[httpx.Client]:
    with hub.client(hub.token) as client:
        yield client


def put(http: httpx.Client, key: str, content: str, fmt: str = "json", **extra) -> dict:
    response = http.post(
        f"/api/v1/config/{key}/versions", json={"format": fmt, "content": content, **extra}
    )
    assert response.status_code == 201, response.text
    return response.json()


def release(http: httpx.Client, key: str, rules: list[dict]) -> dict:
    response = http.put(f"/api/v1/config/{key}/releases", json={"rules": rules})
    assert response.status_code == 200, response.text
    return response.json()


def revision(http: httpx.Client) -> int:
    return http.get("/api/v1/config/status").json()["revision"]


# Versions and the effective content.


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_version_in_each_format_is_served_with_its_etag(http, fmt):
    content, media = FORMATS[fmt]
    key = f"acme/fmt/prod/{fmt}"
    created = put(http, key, content, fmt, comment="first")
    version = created["version"]
    digest = hashlib.sha256(content.encode()).hexdigest()
    assert created["key"] == key and created["revision"] >= 1
    assert version["number"] == 1 and version["format"] == fmt and version["sha256"] == digest
    assert version["comment"] == "first" and version["author"].startswith("bootstrap-admin")
    assert version["size"] == len(content.encode()) and "content" not in version

    got = http.get(f"/api/v1/config/{key}")
    assert got.status_code == 200
    assert got.content == content.encode()
    assert got.headers["content-type"] == media
    assert got.headers["etag"] == f'"{digest}"'
    assert got.headers["x-config-version"] == "1"
    assert got.headers["x-config-format"] == fmt
    assert int(got.headers["x-config-revision"]) >= created["revision"]

    for header in (f'"{digest}"', f'W/"{digest}"', f'"other", "{digest}"', "*"):
        cached = http.get(f"/api/v1/config/{key}", headers={"If-None-Match": header})
        assert cached.status_code == 304, header
        assert cached.content == b"" and cached.headers["etag"] == f'"{digest}"'
    stale = http.get(f"/api/v1/config/{key}", headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.content == content.encode()


def test_versions_are_listed_and_read_back(http, assert_problem):
    key = "acme/list/prod/limits"
    put(http, key, '{"v": 1}')
    second = put(http, key, '{"v": 2}', comment="two")
    assert second["version"]["number"] == 2
    listing = http.get(f"/api/v1/config/{key}/versions").json()
    assert listing["latest"] == 2
    assert [v["number"] for v in listing["versions"]] == [1, 2]
    assert all("content" not in v for v in listing["versions"])
    full = http.get(f"/api/v1/config/{key}/versions/2").json()
    assert full["content"] == '{"v": 2}' and full["comment"] == "two" and full["key"] == key
    # No rules: the latest version is what every box gets.
    assert http.get(f"/api/v1/config/{key}").json() == {"v": 2}

    assert_problem(http.get(f"/api/v1/config/{key}/versions/3"), 404, "version_not_found")
    assert_problem(http.get(f"/api/v1/config/{key}/versions/x"), 422, "validation_failed")
    for path in ("", "/versions", "/releases", "/explain"):
        missing = http.get(f"/api/v1/config/acme/list/prod/nothing{path}")
        assert_problem(missing, 404, "key_not_found")


def test_keys_are_listed_by_prefix_and_paged(http, assert_problem):
    for name in ("a", "b", "c"):
        put(http, f"listing/app/env/{name}", "x", "text")
    put(http, "listing/other/env/z", "x", "text")
    page = http.get("/api/v1/config", params={"prefix": "listing/app/", "limit": 2}).json()
    assert [k["key"] for k in page["keys"]] == ["listing/app/env/a", "listing/app/env/b"]
    assert page["next"] == "listing/app/env/b"
    assert page["keys"][0]["latest"] == 1 and page["keys"][0]["rules"] == 0
    rest = http.get("/api/v1/config", params={"prefix": "listing/app/", "after": page["next"]})
    assert [k["key"] for k in rest.json()["keys"]] == ["listing/app/env/c"]
    assert rest.json()["next"] is None
    everything = [
        k["key"] for k in http.get("/api/v1/config", params={"limit": 1000}).json()["keys"]
    ]
    assert everything == sorted(everything) and "listing/other/env/z" in everything
    assert_problem(
        http.get("/api/v1/config", params={"prefix": "bad prefix"}), 422, "invalid_prefix"
    )
    assert_problem(http.get("/api/v1/config", params={"limit": 0}), 422, "validation_failed")


# Long polls.


def held_get(client: httpx.Client, path: str, **kwargs) -> tuple[threading.Thread, list]:
    """GET in a thread; the list gets (response, seconds it was held)."""
    box: list = []

    def get() -> None:
        began = time.monotonic()
        response = client.get(path, **kwargs)
        box.append((response, time.monotonic() - began))

    thread = threading.Thread(target=get)
    thread.start()
    return thread, box


def test_long_poll_returns_when_a_new_version_is_released(hub, http):
    key = "acme/poll/prod/limits"
    first = put(http, key, '{"v": 1}')
    release(http, key, [{"version": 1, "priority": 0}])
    etag = http.get(f"/api/v1/config/{key}").headers["etag"]
    path = f"/api/v1/config/{key}"
    with hub.client(hub.token, timeout=30) as waiter:
        thread, box = held_get(waiter, path, params={"wait": 20}, headers={"If-None-Match": etag})
        time.sleep(0.5)
        put(http, key, '{"v": 2}')  # a new version, not released: the content stays
        put(http, "acme/poll/prod/other", '{"unrelated": true}')
        time.sleep(0.5)
        assert not box, "released content did not change; the poll must still be held"
        released = release(http, key, [{"version": 2, "priority": 0}])
        thread.join(10)
    response, held = box[0]
    assert response.status_code == 200, response.text
    assert response.json() == {"v": 2} and response.headers["x-config-version"] == "2"
    assert int(response.headers["x-config-revision"]) >= released["revision"] > first["revision"]
    assert 1.0 <= held < 10


def test_long_poll_answers_304_at_the_timeout(http):
    key = "acme/poll/prod/quiet"
    put(http, key, "quiet", "text")
    etag = http.get(f"/api/v1/config/{key}").headers["etag"]
    began = time.monotonic()
    response = http.get(
        f"/api/v1/config/{key}", params={"wait": 1.2}, headers={"If-None-Match": etag}
    )
    held = time.monotonic() - began
    assert response.status_code == 304 and response.headers["etag"] == etag
    assert 1.1 <= held < 5
    # Without a matching ETag the wait does not hold the answer.
    began = time.monotonic()
    assert http.get(f"/api/v1/config/{key}", params={"wait": 30}).status_code == 200
    assert time.monotonic() - began < 2


def test_bad_wait_is_refused(http, assert_problem):
    put(http, "acme/poll/prod/badwait", "x", "text")
    for wait in ("-1", "61", "soon", "nan"):
        response = http.get("/api/v1/config/acme/poll/prod/badwait", params={"wait": wait})
        assert_problem(response, 422, "validation_failed")


# Release rules.


def test_rules_pick_by_labels_and_explain_says_why(http, assert_problem):
    key = "acme/rules/prod/limits"
    for n in (1, 2, 3):
        put(http, key, json.dumps({"v": n}))
    rules = [
        {"labels": {"site": "south"}, "version": 3, "priority": 10},
        {"labels": {"site": "north", "tier": "canary"}, "version": 2, "priority": 5},
        {"version": 1, "priority": 0},
    ]
    stored = release(http, key, list(reversed(rules)))
    assert stored["rules"] == [{**r, "labels": r.get("labels", {})} for r in rules]  # sorted
    assert http.get(f"/api/v1/config/{key}/releases").json()["rules"] == stored["rules"]
    assert http.get(f"/api/v1/config/{key}").json() == {"v": 2}

    explained = http.get(f"/api/v1/config/{key}/explain").json()
    assert explained["key"] == key and explained["version"] == 2
    assert explained["matched_rule"] == 1
    assert explained["box"]["labels"]["site"] == "north"
    assert 0 <= explained["box"]["bucket"] < 10_000
    south, north, default = explained["rules"]
    assert south["matched"] is False and "site='south'" in south["why"]
    assert "this box has site='north'" in south["why"]
    assert north["matched"] is True
    assert default["matched"] is False and "higher-priority" in default["why"]

    # No rule matches this box: the key has no content for it, and the problem says why.
    release(http, key, [{"labels": {"site": "south"}, "version": 3, "priority": 1}])
    body = assert_problem(http.get(f"/api/v1/config/{key}"), 404, "not_released")
    assert body["explain"]["version"] is None
    assert "site='north'" in body["explain"]["rules"][0]["why"]
    listed = http.get("/api/v1/config", params={"prefix": key}).json()["keys"]
    assert listed[0]["rules"] == 1 and listed[0]["latest"] == 3


def test_percent_canary_follows_the_sticky_bucket(http):
    key = "acme/rules/prod/canary"
    put(http, key, '{"v": 1}')
    put(http, key, '{"v": 2}')
    bucket = http.get(f"/api/v1/config/{key}/explain").json()["box"]["bucket"]
    under = (bucket + 1) / 100  # the first bucket+1 buckets: this box is in
    over = max(bucket / 100, 0.001)  # the first `bucket` buckets: this box is not
    canary = {"labels": {"tier": "canary"}, "version": 2, "priority": 5}
    base = {"version": 1, "priority": 0}

    release(http, key, [{**canary, "percent": under}, base])
    assert http.get(f"/api/v1/config/{key}").json() == {"v": 2}
    why = http.get(f"/api/v1/config/{key}/explain").json()["rules"][0]["why"]
    assert f"bucket {bucket} of 10000 is under" in why

    release(http, key, [{**canary, "percent": over}, base])
    assert http.get(f"/api/v1/config/{key}").json() == {"v": 1}
    why = http.get(f"/api/v1/config/{key}/explain").json()["rules"][0]["why"]
    assert f"bucket {bucket} of 10000 is not under" in why

    # 100 % of the canary label: in, whatever the bucket.
    release(http, key, [{**canary, "percent": 100}, base])
    assert http.get(f"/api/v1/config/{key}").json() == {"v": 2}


@pytest.mark.parametrize(
    ("rules", "status", "code"),
    [
        ([{"version": 9, "priority": 1}], 422, "unknown_version"),
        ([{"version": 1, "priority": 3}, {"version": 2, "priority": 3}], 422, "duplicate_priority"),
        ([{"version": 1, "priority": 1, "weight": 2}], 422, "invalid_rules"),
        ([{"version": 1, "priority": 1, "percent": 0}], 422, "invalid_rules"),
        ([{"version": 1, "priority": 5000}], 422, "invalid_rules"),
        ([{"version": 1, "priority": 1, "labels": {"site": 1}}], 422, "invalid_rules"),
        ({"version": 1}, 422, "validation_failed"),
    ],
)
def test_bad_rules_are_refused_and_change_nothing(http, assert_problem, rules, status, code):
    key = "acme/rules/prod/refused"
    if http.get(f"/api/v1/config/{key}").status_code == 404:
        put(http, key, '{"v": 1}')
        put(http, key, '{"v": 2}')
        release(http, key, [{"version": 1, "priority": 0}])
    before = revision(http)
    response = http.put(f"/api/v1/config/{key}/releases", json={"rules": rules})
    assert_problem(response, status, code)
    assert http.get(f"/api/v1/config/{key}/releases").json()["rules"] == [
        {"labels": {}, "version": 1, "priority": 0}
    ]
    assert revision(http) == before


def test_rules_for_a_missing_key_are_refused(http, assert_problem):
    response = http.put(
        "/api/v1/config/acme/rules/prod/ghost/releases", json={"rules": [{"version": 1}]}
    )
    assert_problem(response, 404, "key_not_found")


# Bad versions: each refused with its own code, nothing stored.


def body(fmt: str, content: object, **extra) -> dict:
    return {"format": fmt, "content": content, **extra}


BAD_VERSIONS = {  # id: (key, body, code); every one a 422
    "key tenant": (".hidden/app/env/name", body("json", "{}"), "invalid_key"),
    "key app": ("acme/-lead/env/name", body("json", "{}"), "invalid_key"),
    "key env": ("acme/app/e%20nv/name", body("json", "{}"), "invalid_key"),
    "key name": (f"acme/app/env/{'n' * 65}", body("json", "{}"), "invalid_key"),
    "format": ("acme/bad/env/format", body("xml", "<a/>"), "invalid_format"),
    "json": ("acme/bad/env/json", body("json", '{"a": '), "content_does_not_parse"),
    "json nan": ("acme/bad/env/nan", body("json", "NaN"), "content_does_not_parse"),
    "toml": ("acme/bad/env/toml", body("toml", "a = = 1"), "content_does_not_parse"),
    "yaml": ("acme/bad/env/yaml", body("yaml", "a: [1, 2"), "content_does_not_parse"),
    "yaml tag": (
        "acme/bad/env/tag",
        body("yaml", "!!python/object/apply:os.system ['true']"),
        "content_does_not_parse",
    ),
    "empty": ("acme/bad/env/empty", body("text", ""), "empty_content"),
    "too large": ("acme/bad/env/large", body("text", "x" * (MAX_CONTENT + 1)), "content_too_large"),
    "nul": ("acme/bad/env/nul", body("text", "a\x00b"), "invalid_content"),
    "not a string": ("acme/bad/env/number", body("text", 5), "validation_failed"),
    "no content": ("acme/bad/env/missing", {"format": "text"}, "validation_failed"),
    "unknown field": ("acme/bad/env/unknown", body("text", "x", mode=1), "validation_failed"),
    "long comment": (
        "acme/bad/env/comment",
        body("text", "x", comment="c" * 1025),
        "invalid_comment",
    ),
}


@pytest.mark.parametrize(("key", "body", "code"), BAD_VERSIONS.values(), ids=list(BAD_VERSIONS))
def test_bad_versions_are_refused_and_nothing_is_stored(http, assert_problem, key, body, code):
    before = revision(http)
    response = http.post(f"/api/v1/config/{key}/versions", json=body)
    problem = assert_problem(response, 422, code)
    if code == "validation_failed":
        assert problem["errors"]
    assert revision(http) == before
    if code != "invalid_key":
        assert_problem(http.get(f"/api/v1/config/{key}"), 404, "key_not_found")


def test_malformed_and_oversized_bodies_are_refused(hub, http, assert_problem):
    path = "/api/v1/config/acme/bad/env/body/versions"
    before = revision(http)
    garbage = http.post(
        path, content=b'{"format": "json", ', headers={"Content-Type": "application/json"}
    )
    assert_problem(garbage, 400, "malformed_json")
    as_text = http.post(path, content=b"{}", headers={"Content-Type": "text/plain"})
    assert_problem(as_text, 415, "unsupported_media_type")
    not_object = http.post(path, json=["json", "{}"])
    assert_problem(not_object, 422, "validation_failed")
    # Bigger than any version could be, even escaped: refused before it is read.
    huge = {"format": "text", "content": "x" * (2 << 20)}
    assert_problem(http.post(path, json=huge), 413, "payload_too_large")
    assert revision(http) == before
    assert_problem(http.get("/api/v1/config/acme/bad/env/body"), 404, "key_not_found")


def test_the_largest_content_fits_even_when_escaped(http):
    """Content of exactly max_content_bytes, of characters JSON escapes six-fold."""
    content = "\x01" * MAX_CONTENT
    assert len(json.dumps({"content": content})) > 6 * MAX_CONTENT
    created = put(http, "acme/bad/env/escaped", content, "text")
    assert created["version"]["size"] == MAX_CONTENT
    assert http.get("/api/v1/config/acme/bad/env/escaped").text == content


# The SSE watch.


class EventStream:
    """Server-Sent Events read from a streaming httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()

    def next(self) -> dict:
        """The next event (comments skipped): {"id", "event", "data"}."""
        event: dict = {}
        for line in self.lines:
            if line == "":
                if event:
                    return event
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(": ")
            event[field] = value
        raise EOFError(f"the stream ended; partial event {event}")

    def changes(self, count: int) -> list[dict]:
        events = [self.next() for _ in range(count)]
        assert all(e["event"] == "change" for e in events), events
        return [{"id": int(e["id"]), **json.loads(e["data"])} for e in events]


def watch(client: httpx.Client, **kwargs):
    return client.stream("GET", "/api/v1/config/watch", **kwargs)


def test_watch_streams_changes_in_order_with_ids_under_a_prefix(hub, http):
    with (
        hub.client(hub.token, timeout=15) as watcher,
        watch(watcher, params={"prefix": "sse/a/"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-accel-buffering"] == "no"
        stream = EventStream(response)
        one = put(http, "sse/a/x/k", '{"v": 1}')
        put(http, "sse/b/x/k", '{"v": 1}')  # another prefix: not sent
        two = release(http, "sse/a/x/k", [{"version": 1, "priority": 0}])
        three = put(http, "sse/a/x/other", "x", "text")
        changes = stream.changes(3)
    assert [c["id"] for c in changes] == [one["revision"], two["revision"], three["revision"]]
    assert [c["revision"] for c in changes] == [c["id"] for c in changes]
    first, second, third = changes
    assert first["key"] == "sse/a/x/k" and first["op"] == "version" and first["version"] == 1
    assert first["sha256"] == one["version"]["sha256"] and "content" not in first
    assert second["op"] == "rules"
    assert second["rules"] == [{"labels": {}, "version": 1, "priority": 0}]
    assert third["key"] == "sse/a/x/other"


def test_watch_resumes_from_last_event_id_or_after(hub, http):
    start = revision(http)
    made = [put(http, "sse/resume/x/k", json.dumps({"v": n}))["revision"] for n in range(3)]
    with hub.client(hub.token, timeout=15) as watcher:
        resume = {"Last-Event-ID": str(made[0]), "Cache-Control": "no-cache"}
        with watch(watcher, params={"prefix": "sse/resume/"}, headers=resume) as response:
            assert [c["id"] for c in EventStream(response).changes(2)] == made[1:]
        with watch(watcher, params={"after": start, "prefix": "sse/resume/"}) as response:
            assert [c["id"] for c in EventStream(response).changes(3)] == made
        # Last-Event-ID wins over ?after.
        with watch(watcher, params={"after": start}, headers=resume) as response:
            assert EventStream(response).changes(1)[0]["id"] == made[1]


def test_bad_watch_requests_are_refused(http, assert_problem):
    now = revision(http)
    cases = [
        ({"params": {"prefix": "no spaces"}}, 422, "invalid_prefix"),
        ({"params": {"after": "-1"}}, 422, "validation_failed"),
        ({"headers": {"Last-Event-ID": "abc"}}, 422, "validation_failed"),
        ({"params": {"after": now + 100}}, 409, "revision_ahead"),
    ]
    for kwargs, status, code in cases:
        with watch(http, **kwargs) as response:
            response.read()
            assert_problem(response, status, code)


def test_a_compacted_resume_point_is_410_and_the_stream_ends_on_sigterm(start_appliance):
    process = start_appliance(env={"APPLIANCE_CONFIG_LOG_RETENTION": "10"})
    with process.client(process.token, timeout=15) as http:
        made = [put(http, "gone/app/env/k", json.dumps({"v": n}))["revision"] for n in range(14)]
        status = http.get("/api/v1/config/status").json()
        assert status["revision"] == made[-1] == 14 and status["compacted_through"] == 4
        for kwargs in ({"headers": {"Last-Event-ID": "0"}}, {"params": {"after": 3}}):
            with watch(http, **kwargs) as response:
                response.read()
                body = _problem(response, 410, "revision_compacted")
                assert body["compacted_through"] == 4 and body["revision"] == 14
        with watch(http, params={"after": 4}) as response:
            assert [c["id"] for c in EventStream(response).changes(10)] == made[4:]

        # A watcher waiting for changes when the appliance is told to stop: its stream
        # ends (cleanly, not cut), and the process exits 0 promptly.
        with watch(http) as response:
            assert response.status_code == 200
            stream = EventStream(response)
            began = time.monotonic()
            process.proc.send_signal(signal.SIGTERM)
            with pytest.raises(EOFError):
                stream.next()
            assert time.monotonic() - began < 5
    assert process.proc.wait(10) == 0
    assert time.monotonic() - began < 10


def _problem(response: httpx.Response, status: int, code: str) -> dict:
    from tests.api.conftest import check_problem

    return check_problem(response, status, code)


# A replica refuses writes.


def wait_started(process: ApplianceProcess, timeout: float = 120.0) -> ApplianceProcess:
    """Up and answering, healthy or not (a replica whose upstream is away is degraded)."""
    endpoints = process.data_dir / "run" / "endpoints.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.proc.poll() is None, process.log()
        if endpoints.exists():
            url = json.loads(endpoints.read_text())["http"]
            try:
                httpx.get(f"{url}/api/v1/health", timeout=2)
            except httpx.HTTPError:
                pass
            else:
                process.url = url
                process.token = Path(process.data_dir / "admin.token").read_text().strip()
                return process
        time.sleep(0.05)
    raise AssertionError(f"not started in {timeout} s:\n{process.log()}")


def test_writes_on_a_replica_are_refused(start_appliance, assert_problem):
    env = {
        "APPLIANCE_CONFIG_MODE": "replica",
        "APPLIANCE_CONFIG_UPSTREAM": "http://127.0.0.1:9",  # nobody listens there
        "APPLIANCE_CONFIG_UPSTREAM_TOKEN": "apl_000000000000_" + "x" * 43,
    }
    process = wait_started(start_appliance(env=env, ready=False))
    with process.client(process.token) as http:
        response = http.post(
            "/api/v1/config/acme/app/env/name/versions", json={"format": "text", "content": "x"}
        )
        body = assert_problem(response, 409, "read_only_replica")
        assert "replica" in body["detail"]
        response = http.put("/api/v1/config/acme/app/env/name/releases", json={"rules": []})
        assert_problem(response, 409, "read_only_replica")
        status = http.get("/api/v1/config/status").json()
        assert status["mode"] == "replica" and status["revision"] == 0
        assert_problem(http.get("/api/v1/config/acme/app/env/name"), 404, "key_not_found")
