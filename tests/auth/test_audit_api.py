"""The audit log: every change (done or refused) and every 401/403 is chained into it, and
`appliance audit verify` finds a changed, removed, truncated or reordered entry.

One appliance runs a scripted sequence of requests (`recorded`), the log is read back over
the API, the process is stopped, and each tampering test edits its own copy of the data.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from appliance.auth.audit import GENESIS, chain_hash
from appliance.auth.sessions import COOKIE_NAME
from appliance.store import pack_key

TOKENS = "/api/v1/auth/tokens"
ME = "/api/v1/auth/me"
ANON = "anonymous"


@dataclass
class Expected:
    actor: str
    action: str
    target: str
    outcome: str
    reason: str | None = None
    path: str | None = None  # the request path, when the target is not the path


@dataclass
class Recorded:
    data_dir: Path
    expected: list[Expected]
    entries: list[dict]
    verify: dict
    newest_three: list[int]
    page_after_10: list[int]
    before_5_desc: list[int]


def run_script(appliance) -> list[Expected]:
    """Requests that must be audited, interleaved with reads that must not be."""
    url = appliance.url
    expected: list[Expected] = []

    def client(secret: str | None = None, **headers: str) -> httpx.Client:
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        return httpx.Client(base_url=url, headers=headers, timeout=10)

    with client(appliance.token) as admin, client() as anon:
        admin_id = admin.get(ME).json()["token_id"]  # a read: not audited
        me = f"token:{admin_id}"

        created = admin.post(TOKENS, json={"name": "audited", "role": "viewer"})
        assert created.status_code == 201
        viewer = created.json()
        expected.append(Expected(me, f"POST {TOKENS}", f"token:{viewer['id']}", "201", path=TOKENS))

        assert admin.post(TOKENS, json={"role": "viewer"}).status_code == 422
        expected.append(Expected(me, f"POST {TOKENS}", TOKENS, "422"))
        assert (
            admin.post(
                TOKENS, content=b"{", headers={"Content-Type": "application/json"}
            ).status_code
            == 400
        )
        expected.append(Expected(me, f"POST {TOKENS}", TOKENS, "400"))
        assert admin.get(TOKENS).status_code == 200  # not audited
        assert anon.get("/api/v1/health").status_code == 200  # not audited

        with client(viewer["token"]) as as_viewer:
            v = f"token:{viewer['id']}"
            assert as_viewer.get(ME).status_code == 200  # not audited
            assert as_viewer.get(TOKENS).status_code == 403
            expected.append(Expected(v, f"GET {TOKENS}", TOKENS, "403"))
            assert as_viewer.post(TOKENS, json={"name": "x", "role": "admin"}).status_code == 403
            expected.append(Expected(v, f"POST {TOKENS}", TOKENS, "403"))

        assert anon.get(ME).status_code == 401
        expected.append(Expected(ANON, f"GET {ME}", ME, "401"))
        bogus = f"apl_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
        with client(bogus) as as_bogus:
            assert as_bogus.get("/api/v1/metrics").status_code == 401
        expected.append(
            Expected(ANON, "GET /api/v1/metrics", "/api/v1/metrics", "401", "unknown token")
        )
        assert anon.post(TOKENS, json={"name": "x", "role": "admin"}).status_code == 401
        expected.append(Expected(ANON, f"POST {TOKENS}", TOKENS, "401"))

        session = admin.post("/api/v1/auth/session")
        assert session.status_code == 201
        expected.append(Expected(me, "POST /api/v1/auth/session", "/api/v1/auth/session", "201"))
        cookie = session.cookies[COOKIE_NAME]
        with client(Cookie=f"{COOKIE_NAME}={cookie}") as by_cookie:
            assert by_cookie.post(TOKENS, json={"name": "x", "role": "viewer"}).status_code == 403
        expected.append(Expected(me, f"POST {TOKENS}", TOKENS, "403"))

        assert admin.delete(f"{TOKENS}/{viewer['id']}").status_code == 200
        expected.append(
            Expected(
                me,
                f"DELETE {TOKENS}/<token_id>",
                f"token:{viewer['id']}",
                "200",
                path=f"{TOKENS}/{viewer['id']}",
            )
        )
        assert admin.delete(f"{TOKENS}/000000000000").status_code == 404
        expected.append(
            Expected(me, f"DELETE {TOKENS}/<token_id>", f"{TOKENS}/000000000000", "404")
        )
        with client(viewer["token"]) as revoked:
            assert revoked.get(ME).status_code == 401
        expected.append(Expected(ANON, f"GET {ME}", ME, "401", "token revoked"))

        assert anon.post("/api/v1/nope", json={}).status_code == 404
        expected.append(Expected(ANON, "POST unmatched", "/api/v1/nope", "404"))
        assert admin.post("/api/v1/admin/backup").status_code == 200
        expected.append(Expected(me, "POST /api/v1/admin/backup", "/api/v1/admin/backup", "200"))
    return expected


@pytest.fixture(scope="module")
def recorded(shared_appliance) -> Recorded:
    expected = run_script(shared_appliance)
    with shared_appliance.client(shared_appliance.token) as admin:
        entries = admin.get("/api/v1/audit", params={"limit": 1000}).json()["entries"]
        verify = admin.get("/api/v1/audit/verify").json()

        def seqs(**params) -> list[int]:
            response = admin.get("/api/v1/audit", params=params)
            assert response.status_code == 200
            return [entry["seq"] for entry in response.json()["entries"]]

        newest_three = seqs(order="desc", limit=3)
        page_after_10 = seqs(after=10, limit=2)
        before_5_desc = seqs(order="desc", after=5)
    assert shared_appliance.stop() == 0
    return Recorded(
        shared_appliance.data_dir,
        expected,
        entries,
        verify,
        newest_three,
        page_after_10,
        before_5_desc,
    )


def test_every_change_and_refusal_is_audited_in_order(recorded):
    assert [(e["actor"], e["action"], e["target"], e["outcome"]) for e in recorded.entries] == [
        (x.actor, x.action, x.target, x.outcome) for x in recorded.expected
    ]
    for entry, expected in zip(recorded.entries, recorded.expected, strict=True):
        assert entry["remote"] == "127.0.0.1"
        path = expected.path or expected.target
        reason = {"reason": expected.reason} if expected.reason else {}
        assert entry["detail"] == {"path": path, **reason}


def test_the_entries_form_a_hash_chain(recorded):
    entries = recorded.entries
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    previous_hash = GENESIS.hex()
    for entry in entries:
        assert entry["prev"] == previous_hash
        body = {
            key: entry[key]
            for key in ("seq", "time", "actor", "action", "target", "outcome", "remote", "detail")
        }
        body["prev"] = bytes.fromhex(entry["prev"])
        assert chain_hash(body["prev"], body).hex() == entry["hash"]
        previous_hash = entry["hash"]


def test_audit_paging_and_order(recorded):
    last = len(recorded.expected)
    assert recorded.newest_three == [last, last - 1, last - 2]
    assert recorded.page_after_10 == [11, 12]
    assert recorded.before_5_desc == [4, 3, 2, 1]


def test_the_api_verifies_the_intact_chain(recorded):
    assert recorded.verify == {"ok": True, "entries": len(recorded.expected), "problems": []}


def copy_data(recorded: Recorded, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(recorded.data_dir, copy)
    (copy / "run" / "endpoints.json").unlink(missing_ok=True)  # a clean stop removed it
    return copy


def change_outcome(txn) -> None:
    entry = txn.get("audit", pack_key(4))
    assert entry["outcome"] == "403"
    txn.put("audit", pack_key(4), {**entry, "outcome": "200"})


def change_actor(txn) -> None:
    entry = txn.get("audit", pack_key(1))
    txn.put("audit", pack_key(1), {**entry, "actor": "token:someone-else"})


def remove_middle(txn) -> None:
    assert txn.delete("audit", pack_key(8))


def remove_last(txn) -> None:
    last = txn.scan("audit", reverse=True, limit=1)[0][0]
    assert txn.delete("audit", last)


def swap(txn) -> None:
    five, six = txn.get("audit", pack_key(5)), txn.get("audit", pack_key(6))
    txn.put("audit", pack_key(5), six)
    txn.put("audit", pack_key(6), five)


TAMPERING = {
    "changed-outcome": (change_outcome, 0, ["entry 4 was changed (its hash does not match)"]),
    "changed-actor": (change_actor, 0, ["entry 1 was changed (its hash does not match)"]),
    "removed-middle": (
        remove_middle,
        -1,
        [
            "expected entry 8, found 9 (entries missing)",
            "entry 9 does not link to the entry before it",
        ],
    ),
    "removed-last": (remove_last, -1, ["the head names entry {n} but the chain ends at {m}"]),
    "swapped": (swap, 0, ["entry stored under (5,) claims seq 6"]),
}


def test_the_cli_passes_the_untampered_log(recorded, tmp_path, cli):
    copy = copy_data(recorded, tmp_path)
    result = cli("audit", "verify", "--data-dir", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"audit log intact: {len(recorded.expected)} entries"


@pytest.mark.parametrize("name", TAMPERING, ids=TAMPERING)
def test_the_cli_finds_tampering(recorded, tmp_path, cli, open_store, name):
    tamper, count_change, problems = TAMPERING[name]
    copy = copy_data(recorded, tmp_path)
    with open_store(copy) as store:
        store.write_now(tamper)
    result = cli("audit", "verify", "--data-dir", str(copy))
    assert result.returncode == 1, result.stdout + result.stderr
    entries = len(recorded.expected) + count_change
    assert "audit log TAMPERED" in result.stdout
    assert f"in {entries} entries" in result.stdout
    lines = {line.strip().removeprefix("- ") for line in result.stdout.splitlines()}
    for problem in problems:
        problem = problem.format(n=len(recorded.expected), m=len(recorded.expected) - 1)
        assert problem in lines, result.stdout


def test_the_api_reports_tampering_too(recorded, tmp_path, open_store, start_appliance):
    copy = copy_data(recorded, tmp_path)
    with open_store(copy) as store:
        store.write_now(change_outcome)
    appliance = start_appliance(copy)
    with appliance.client(appliance.token) as admin:
        response = admin.get("/api/v1/audit/verify")
    assert response.status_code == 200
    assert response.json() == {
        "ok": False,
        "entries": len(recorded.expected),
        "problems": ["entry 4 was changed (its hash does not match)"],
    }
