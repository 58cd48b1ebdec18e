"""`appliance token create|list|revoke`: manage API tokens in the local store.

These work on the data directory directly (LMDB lets the CLI share it with a running
service), so an operator on the box can always mint an admin token, even with none left."""

from __future__ import annotations

import argparse
import datetime
import json
import time

from appliance.auth import ROLES, AuditLog, TokenStore
from appliance.auth.tokens import TokenNotFound
from appliance.bus.principal import TokenPatternError
from appliance.cli.common import CliError, local_actor, open_local_store, say, settings_from


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    token = commands.add_parser("token", help="manage API tokens", parents=[parent])
    sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")

    create = sub.add_parser("create", help="create a token and print it once", parents=[parent])
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--ttl", type=float, metavar="SECONDS", help="expire after this long")
    create.add_argument(
        "--bus-publish",
        action="append",
        metavar="PATTERN",
        help="a bus topic pattern it may publish and call (repeatable; replaces the role's)",
    )
    create.add_argument(
        "--bus-subscribe",
        action="append",
        metavar="PATTERN",
        help="a bus topic pattern it may subscribe to (repeatable; replaces the role's)",
    )
    create.set_defaults(handler=create_token)

    listing = sub.add_parser("list", help="list tokens (never their secrets)", parents=[parent])
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=list_tokens)

    revoke = sub.add_parser("revoke", help="revoke a token by id", parents=[parent])
    revoke.add_argument("token_id")
    revoke.set_defaults(handler=revoke_token)


def create_token(args: argparse.Namespace) -> int:
    store = open_local_store(settings_from(args))
    try:
        try:
            write, token = TokenStore.creation(
                args.name,
                args.role,
                ttl_s=args.ttl,
                created_by=local_actor(),
                bus_publish=args.bus_publish,
                bus_subscribe=args.bus_subscribe,
            )
        except TokenPatternError as exc:
            raise CliError(f"{exc.code}: {exc}", 2) from None
        except ValueError as exc:
            raise CliError(str(exc), 2) from None

        def create_and_audit(txn):
            record = write(txn)
            AuditLog.appending(
                local_actor(),
                "token.create",
                f"token:{record.id}",
                "ok",
                detail={"role": record.role, "name": record.name, **_bus_detail(record)},
            )(txn)
            return record

        store.write_now(create_and_audit)
    finally:
        store.close()
    say(token)
    return 0


def _bus_detail(record) -> dict:
    """The token's own bus patterns, for the audit entry (none: the role's)."""
    return {
        name: value
        for name, value in (
            ("bus_publish", record.bus_publish),
            ("bus_subscribe", record.bus_subscribe),
        )
        if value is not None
    }


def list_tokens(args: argparse.Namespace) -> int:
    store = open_local_store(settings_from(args), readonly=True)
    try:
        records = TokenStore(store).list()
    finally:
        store.close()
    if args.json:
        say(json.dumps([r.public() for r in records], indent=2))
        return 0
    say(f"{'ID':<14}{'ROLE':<10}{'STATE':<9}{'CREATED':<22}NAME")
    for r in records:
        state = "revoked" if r.revoked_at else ("active" if r.usable(time.time()) else "expired")
        created = datetime.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M:%S")
        say(f"{r.id:<14}{r.role:<10}{state:<9}{created:<22}{r.name}")
    return 0


def revoke_token(args: argparse.Namespace) -> int:
    store = open_local_store(settings_from(args))
    try:
        revoke = TokenStore.revocation(args.token_id)

        def revoke_and_audit(txn):
            record = revoke(txn)
            AuditLog.appending(local_actor(), "token.revoke", f"token:{record.id}", "ok")(txn)
            return record

        try:
            store.write_now(revoke_and_audit)
        except TokenNotFound:
            raise CliError(f"no token {args.token_id!r}") from None
    finally:
        store.close()
    say(f"revoked {args.token_id}")
    return 0
