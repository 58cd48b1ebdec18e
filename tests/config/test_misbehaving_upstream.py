"""A real replica process following a fake upstream (a test double for a remote hub, an
http.server on loopback) that serves a bad checksum, then entries out of order, then
garbage: the replica applies none of it, says why, keeps serving, and recovers."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from appliance.config.feed import make_entry
from tests.config.conftest import KEY, status_of, wait_for

TOKEN = "apl_fake_replica_token"


def version_entry(revision: int, number: int, content: str) -> dict:
    body = {
        "number": number,
        "format": "text",
        "content": content,
        "sha256": hashlib.sha256(content.encode()).hexdigest(),
        "author": "fake",
        "comment": "",
        "created_at": 1.0,
    }
    return make_entry(revision, KEY, "version", body, 1.0)


class FakeUpstream:
    """Serves `/api/v1/config/log` from `entries`, or `override` (status, bytes) when set."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.override: tuple[int, bytes] | None = None
        self.tokens: list[str] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.tokens.append(self.headers.get("Authorization", ""))
                status, body = fake.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str) -> tuple[int, bytes]:
        url = urlparse(path)
        if url.path != "/api/v1/config/log":
            return 404, b'{"code": "not_found"}'
        after = int(parse_qs(url.query)["after"][0])
        with self.lock:
            override, entries = self.override, list(self.entries)
        if override is not None:
            return override
        found = [e for e in entries if e["revision"] > after]
        if not found:
            time.sleep(0.2)  # a short long poll
        head = max((e["revision"] for e in entries), default=0)
        page = {"revision": max(head, after), "compacted_through": 0, "entries": found}
        return 200, json.dumps(page).encode()

    def serve(self, entries: list[dict], override: tuple[int, bytes] | None = None) -> None:
        with self.lock:
            self.entries, self.override = entries, override


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join(timeout=5)


def error_code(replica) -> str | None:
    return (status_of(replica)["error"] or {}).get("code")


def test_a_replica_applies_nothing_bad_says_why_keeps_serving_and_recovers(
    fake_upstream, start_replica
):
    good = [version_entry(1, 1, "one"), version_entry(2, 2, "two")]
    fake_upstream.serve(good)
    replica = start_replica(fake_upstream.url, TOKEN, env={"APPLIANCE_CONFIG_POLL_WAIT_S": "1"})
    wait_for(lambda: status_of(replica)["revision"] == 2, 20, "the good entries applied")
    assert fake_upstream.tokens[0] == f"Bearer {TOKEN}"

    def read() -> str:
        with replica.client(replica.token) as http:
            return http.get(f"/api/v1/config/{KEY}").text

    assert read() == "two"

    forged = version_entry(3, 3, "three")
    forged["version"]["content"] = "forged"  # the checksum no longer holds
    skipping = version_entry(4, 3, "three")  # revision 3 never came
    garbage = (200, b"<html>captive portal</html>")
    for served, override, code in (
        ([*good, forged], None, "feed_bad_checksum"),
        ([*good, skipping], None, "feed_out_of_order"),
        (good, garbage, "upstream_bad_response"),
    ):
        fake_upstream.serve(served, override)
        wait_for(lambda code=code: error_code(replica) == code, 20, code)
        status = status_of(replica)
        assert status["revision"] == 2 and status["connected"] is False
        assert status["error"]["message"] and status["error"]["at"] > 0
        assert read() == "two"  # still serving what it has
        with replica.client(replica.token) as http:
            versions = http.get(f"/api/v1/config/{KEY}/versions").json()["versions"]
        assert [v["number"] for v in versions] == [1, 2]  # nothing bad was applied
        component = replica.client().get("/api/v1/health").json()["components"]["config"]
        assert component["status"] == "degraded"

    fake_upstream.serve([*good, version_entry(3, 3, "three")])
    wait_for(lambda: status_of(replica)["revision"] == 3, 30, "recovered")
    wait_for(lambda: status_of(replica)["error"] is None, 10, "error cleared")
    assert read() == "three"
    status = status_of(replica)
    assert status["connected"] is True and status["lag"] == 0
    log = replica.log()
    for code in ("feed_bad_checksum", "feed_out_of_order", "upstream_bad_response"):
        assert log.count(f"({code})") == 1, log  # each once, not once per retry
