"""The `appliance` command line against a real data directory and a real running service."""

import json

import httpx

from appliance.store import Store


def test_help_and_usage_errors(cli):
    assert cli("--help").returncode == 0
    for command in (
        ["run"],
        ["status"],
        ["token"],
        ["token", "create"],
        ["backup"],
        ["audit", "verify"],
    ):
        result = cli(*command, "--help")
        assert result.returncode == 0, command
        assert "usage: appliance" in result.stdout
    assert cli().returncode == 2
    assert cli("explode").returncode == 2
    assert cli("token", "create", "--name", "x", "--role", "root").returncode == 2


def test_commands_refuse_a_directory_without_data(cli, tmp_path):
    result = cli("token", "list", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "no appliance data" in result.stderr
    result = cli("status", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "not running" in result.stderr


def test_token_lifecycle_against_the_running_service(cli, appliance):
    data = ["--data-dir", str(appliance.data_dir)]
    created = cli("token", "create", "--name", "site-tech", "--role", "operator", *data)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("apl_")
    with appliance.client(token) as http:
        me = http.get("/api/v1/auth/me").json()
        assert (me["name"], me["role"]) == ("site-tech", "operator")

    listed = cli("token", "list", "--json", *data)
    records = {r["name"]: r for r in json.loads(listed.stdout)}
    assert records["site-tech"]["role"] == "operator"
    assert token not in listed.stdout
    table = cli("token", "list", *data).stdout
    assert "site-tech" in table and "active" in table

    revoked = cli("token", "revoke", me["token_id"], *data)
    assert revoked.returncode == 0
    with appliance.client(token) as http:
        assert http.get("/api/v1/auth/me").status_code == 401
    assert "revoked" in cli("token", "list", *data).stdout

    unknown = cli("token", "revoke", "doesnotexist", *data)
    assert unknown.returncode == 1 and "no token" in unknown.stderr
    bad_ttl = cli("token", "create", "--name", "x", "--role", "viewer", "--ttl", "5", *data)
    assert bad_ttl.returncode == 2 and "ttl_s" in bad_ttl.stderr

    # The CLI's changes are in the audit log, and the chain is intact.
    verify = cli("audit", "verify", *data)
    assert verify.returncode == 0, verify.stdout
    with appliance.client(appliance.token) as http:
        actions = [e["action"] for e in http.get("/api/v1/audit").json()["entries"]]
    assert actions.count("token.create") == 1 and actions.count("token.revoke") == 1


def test_status_reads_the_running_service(cli, appliance):
    result = cli("status", "--data-dir", str(appliance.data_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
    assert "store" in result.stdout
    raw = cli("status", "--url", appliance.url, "--json")
    assert json.loads(raw.stdout)["status"] == "ok"


def test_backup_while_running_opens_and_holds_the_tokens(cli, appliance, tmp_path):
    with appliance.client(appliance.token) as http:
        made = http.post("/api/v1/auth/tokens", json={"name": "in-backup", "role": "viewer"})
        assert made.status_code == 201
    target = tmp_path / "backup"
    result = cli("backup", str(target), "--data-dir", str(appliance.data_dir))
    assert result.returncode == 0, result.stderr
    copy = Store.open(target, readonly=True)
    try:
        names = {value["name"] for _, value in copy.scan("tokens")}
    finally:
        copy.close()
    assert {"bootstrap-admin", "in-backup"} <= names
    again = cli("backup", str(target), "--data-dir", str(appliance.data_dir))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert httpx.get(f"{appliance.url}/api/v1/health").status_code == 200
