"""A token's own bus patterns: stored at creation, read back as the bus principal's
permissions, refused when malformed or beyond the role; records from before the fields
existed keep their role's defaults. On a store in this process, and through the CLI."""

from __future__ import annotations

import json
import time

import pytest

from appliance.auth.tokens import TokenStore, token_hash
from appliance.bus.principal import TokenPatternError, token_authenticator
from appliance.bus.topics import parse_pattern
from appliance.store import Store, pack_key


@pytest.fixture
def store(tmp_path):
    store = Store.open(tmp_path / "data" / "store")
    yield store
    store.close()


def test_patterns_are_stored_and_become_the_bus_permissions(store):
    write, token = TokenStore.creation(
        "plant-driver", "operator", bus_publish=["plant.>"], bus_subscribe=["plant.*.cmd"]
    )
    record = store.write_now(write)
    assert (record.bus_publish, record.bus_subscribe) == (["plant.>"], ["plant.*.cmd"])
    tokens = TokenStore(store)
    principal = tokens.authenticate(token)
    assert (principal.bus_publish, principal.bus_subscribe) == (("plant.>",), ("plant.*.cmd",))

    bus = token_authenticator(tokens)(token)
    assert bus is not None and (bus.name, bus.role) == ("plant-driver", "operator")
    assert bus.permissions.may_publish("plant.line3.temp")
    assert not bus.permissions.may_publish("office.lights")
    assert bus.permissions.may_subscribe(parse_pattern("plant.line3.cmd"))
    assert not bus.permissions.may_subscribe(parse_pattern("plant.>"))


def test_an_old_record_without_the_fields_keeps_its_role_defaults(store):
    _, token = TokenStore.creation("old", "viewer")  # only for a well-formed secret
    token_id = token.split("_")[1]
    old = {"id": token_id, "name": "old", "role": "viewer", "created_at": time.time()}

    def write_old(txn):
        txn.put("tokens", pack_key(token_id), old)
        txn.put("token_hashes", token_hash(token), token_id)

    store.write_now(write_old)
    tokens = TokenStore(store)
    assert tokens.get(token_id).bus_publish is None
    bus = token_authenticator(tokens)(token)
    assert bus is not None and not bus.permissions.may_publish("a.b")
    assert bus.permissions.may_subscribe(parse_pattern(">"))


@pytest.mark.parametrize(
    ("role", "publish", "subscribe", "code", "field"),
    [
        ("operator", ["plant..x"], None, "invalid_pattern", "bus_publish"),
        ("operator", None, ["sens*.x"], "invalid_pattern", "bus_subscribe"),
        ("viewer", ["plant.>"], None, "pattern_exceeds_role", "bus_publish"),
        ("replica", None, [">"], "pattern_exceeds_role", "bus_subscribe"),
        ("operator", [f"t{i}" for i in range(33)], None, "too_many_patterns", "bus_publish"),
    ],
)
def test_bad_patterns_are_refused_before_anything_is_written(
    store, role, publish, subscribe, code, field
):
    with pytest.raises(TokenPatternError) as refused:
        TokenStore.creation("refused", role, bus_publish=publish, bus_subscribe=subscribe)
    assert (refused.value.code, refused.value.field) == (code, field)
    assert TokenStore(store).list() == []


def test_the_cli_takes_repeatable_patterns_and_refuses_bad_ones(cli, tmp_path, store):
    data = ["--data-dir", str(tmp_path / "data")]
    store.close()  # the CLI opens it itself
    created = cli(
        "token", "create", "--name", "driver", "--role", "operator",
        "--bus-publish", "plant.>", "--bus-publish", "lab.*", "--bus-subscribe", "plant.cmd",
        *data,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    records = {r["name"]: r for r in json.loads(cli("token", "list", "--json", *data).stdout)}
    assert records["driver"]["bus_publish"] == ["plant.>", "lab.*"]
    assert records["driver"]["bus_subscribe"] == ["plant.cmd"]

    viewer = cli("token", "create", "--name", "v", "--role", "viewer", "--bus-publish", "a", *data)
    assert viewer.returncode == 2
    assert "pattern_exceeds_role" in viewer.stderr
    bad = cli("token", "create", "--name", "b", "--role", "admin", "--bus-subscribe", "a..b", *data)
    assert bad.returncode == 2
    assert "invalid_pattern" in bad.stderr
    names = {r["name"] for r in json.loads(cli("token", "list", "--json", *data).stdout)}
    assert names == {"driver"}
