"""POST /api/v1/admin/backup streams a usable copy of the store, as of the request."""

from __future__ import annotations

import hashlib
import shutil

import lmdb

from appliance.auth.audit import verify_chain
from appliance.store import DATABASES, Store, pack_key

TOKENS = "/api/v1/auth/tokens"


def test_backup_streams_a_store_with_the_tokens_made_before_it(
    appliance, start_appliance, tmp_path
):
    with appliance.client(appliance.token) as admin:
        before = [
            admin.post(TOKENS, json={"name": f"before-{role}", "role": role}).json()
            for role in ("viewer", "operator", "admin")
        ]
        revoked = admin.delete(f"{TOKENS}/{before[1]['id']}").json()
        assert revoked["revoked_at"] is not None
        run_before = sorted(p.name for p in (appliance.data_dir / "run").iterdir())

        backup_dir = tmp_path / "backup"
        backup_dir.mkdir()
        with admin.stream("POST", "/api/v1/admin/backup") as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/octet-stream"
            assert response.headers["content-disposition"] == 'attachment; filename="data.mdb"'
            size = int(response.headers["content-length"])
            with (backup_dir / "data.mdb").open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        after = admin.post(TOKENS, json={"name": "after", "role": "viewer"}).json()
        assert sorted(p.name for p in (appliance.data_dir / "run").iterdir()) == run_before

    data = (backup_dir / "data.mdb").read_bytes()
    assert len(data) == size > 0
    for token in [*before, after, {"token": appliance.token}]:
        assert token["token"].encode() not in data  # only hashes are stored

    # Plain LMDB can read it: every named database is there.
    env = lmdb.open(str(backup_dir), readonly=True, max_dbs=16, lock=False)
    try:
        with env.begin() as txn:
            names = {key.decode() for key, _ in txn.cursor()}
    finally:
        env.close()
    assert set(DATABASES) <= names

    store = Store.open(backup_dir, readonly=True)
    try:
        tokens = {value["id"]: value for _, value in store.scan("tokens")}
        audit = store.view(verify_chain)
        last_audit = store.scan("audit", reverse=True, limit=1)[0][1]
        admin_id = store.get("token_hashes", hashlib.sha256(appliance.token.encode()).digest())
        viewer_record = store.get("tokens", pack_key(before[0]["id"]))
    finally:
        store.close()
    assert {t["id"] for t in before} <= set(tokens)
    assert after["id"] not in tokens
    assert tokens[before[1]["id"]]["revoked_at"] == revoked["revoked_at"]
    assert tokens[before[0]["id"]]["revoked_at"] is None
    assert viewer_record["role"] == "viewer" and viewer_record["name"] == "before-viewer"
    assert admin_id in tokens
    # The audit log came along, intact, up to the revocation before the backup.
    assert audit.ok and audit.problems == ()
    assert audit.entries == 4
    assert last_audit["action"] == "DELETE /api/v1/auth/tokens/<token_id>"

    # And the appliance starts from it: the old tokens work, the newer one does not.
    restored_dir = tmp_path / "restored"
    (restored_dir / "store").mkdir(parents=True)
    (backup_dir / "data.mdb").rename(restored_dir / "store" / "data.mdb")
    shutil.copy(appliance.data_dir / "admin.token", restored_dir / "admin.token")
    restored = start_appliance(restored_dir)
    assert restored.token == appliance.token  # restored, not a first start: no new admin
    assert "first start" not in restored.log()
    with restored.client(before[0]["token"]) as http:
        assert http.get("/api/v1/auth/me").json()["name"] == "before-viewer"
    with restored.client(before[1]["token"]) as http:
        assert http.get("/api/v1/auth/me").json()["detail"] == "token revoked"
    with restored.client(after["token"]) as http:
        assert http.get("/api/v1/auth/me").status_code == 401
    with restored.client(before[2]["token"]) as http:
        assert http.get("/api/v1/audit/verify").json()["ok"] is True
