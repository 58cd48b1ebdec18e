"""`appliance backup` and `appliance audit verify`."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.auth.audit import verify_chain
from appliance.cli.common import CliError, open_local_store, say, settings_from
from appliance.store import StoreError


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    backup = commands.add_parser(
        "backup",
        parents=[parent],
        help="write a compacted copy of the store to DIR/data.mdb (safe while running)",
    )
    backup.add_argument(
        "output",
        type=Path,
        metavar="DIR",
        help="directory to write data.mdb into (must not hold one)",
    )
    backup.set_defaults(handler=run_backup)

    audit = commands.add_parser("audit", help="inspect the audit log", parents=[parent])
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = sub.add_parser(
        "verify", parents=[parent], help="recompute the hash chain; exit 1 if it was tampered with"
    )
    verify.set_defaults(handler=run_audit_verify)


def run_backup(args: argparse.Namespace) -> int:
    if (args.output / "data.mdb").exists():
        raise CliError(f"{args.output / 'data.mdb'} already exists; choose an empty directory")
    store = open_local_store(settings_from(args), readonly=True)
    try:
        target = store.backup_to_dir(args.output)
    except StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    say(f"wrote {target} ({target.stat().st_size} bytes)")
    return 0


def run_audit_verify(args: argparse.Namespace) -> int:
    store = open_local_store(settings_from(args), readonly=True)
    try:
        result = store.view(verify_chain)
    finally:
        store.close()
    if result.ok:
        say(f"audit log intact: {result.entries} entries")
        return 0
    say(f"audit log TAMPERED: {len(result.problems)} problem(s) in {result.entries} entries")
    for problem in result.problems:
        say(f"  - {problem}")
    return 1
