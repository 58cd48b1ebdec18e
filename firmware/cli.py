"""The `firmware` command: look at and steer the A/B slots of this box.

    firmware status [--json]          the boot state, both slots, failed versions
    firmware commit                   the slot on trial is good
    firmware rollback [--reason TEXT] back to the good (or previous good) slot
    firmware init --slot S --version V  adopt a first install copied into slot S
    firmware boot                     what systemd's ExecStartPre= runs: use a try of the
                                      slot on trial, or roll back when none are left

Every command takes `--root DIR` (default `$APPLIANCE_FIRMWARE_ROOT`, else
/opt/appliance) and `--grubenv FILE` (default `$APPLIANCE_FIRMWARE_GRUBENV`; when set,
the state is mirrored into that GRUB environment block).

Exit codes: 0 ok; 1 failure (no root, unreadable state, I/O error, lock busy);
2 usage; 3 refused by the boot state (nothing to commit, nothing to roll back to, ...).
Errors are one line on stderr: `firmware: CODE: message`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from firmware import transitions
from firmware.bootloader import GrubEnvFile
from firmware.errors import BadArgument, FirmwareError, Refused
from firmware.slots import SlotManager
from firmware.state import SLOTS
from firmware.status import Status
from firmware.transitions import StartAction

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
DEFAULT_ROOT = "/opt/appliance"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        default=Path(os.environ.get("APPLIANCE_FIRMWARE_ROOT") or DEFAULT_ROOT),
        help="slot root directory (default: $APPLIANCE_FIRMWARE_ROOT or %(default)s)",
    )
    common.add_argument(
        "--grubenv",
        type=Path,
        metavar="FILE",
        default=os.environ.get("APPLIANCE_FIRMWARE_GRUBENV") or None,
        help="mirror the state into this GRUB environment block "
        "(default: $APPLIANCE_FIRMWARE_GRUBENV, else none)",
    )
    parser = argparse.ArgumentParser(
        prog="firmware",
        description="A/B slots of the appliance: status, commit, rollback.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage, 3 refused by the boot state.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", parents=[common], help="show the slots")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=_status)
    commit = commands.add_parser("commit", parents=[common], help="the slot on trial is good")
    commit.set_defaults(handler=_commit)
    rollback = commands.add_parser(
        "rollback", parents=[common], help="go back to the good slot; the version is denied"
    )
    rollback.add_argument("--reason", default="manual rollback", help="recorded with it")
    rollback.set_defaults(handler=_rollback)
    init = commands.add_parser(
        "init", parents=[common], help="adopt a first install copied into a slot"
    )
    init.add_argument("--slot", choices=SLOTS, required=True)
    init.add_argument("--version", required=True, dest="slot_version")
    init.set_defaults(handler=_init)
    boot = commands.add_parser(
        "boot", parents=[common], help="at service start: use a try, or roll back"
    )
    boot.set_defaults(handler=_boot)
    return parser


def _manager(args: argparse.Namespace) -> SlotManager:
    boot_env = GrubEnvFile(args.grubenv) if args.grubenv else None
    return SlotManager(args.root, boot_env=boot_env)


def _when(at: int) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(status: Status) -> str:
    lines = [f"root:     {status.root}"]
    phase = status.phase
    if status.pending is not None:
        phase += f" ({status.tries_left} tries left)"
    lines.append(f"phase:    {phase}")
    lines.append(f"link:     current -> {status.link or '(none)'}")
    for info in status.slots:
        version = info.version or "(not complete)"
        roles = ", ".join(info.roles) or "-"
        denied = "  DENIED" if info.denied else ""
        lines.append(f"slot {info.name}:   {version:<20} {roles}{denied}")
    for failure in status.failed:
        lines.append(
            f"failed:   {failure.version} (slot {failure.slot}, {failure.cause}, "
            f"{_when(failure.at)}): {failure.detail}; not retried"
        )
    if any(health != "ok" for health in status.copies):
        lines.append(f"copies:   {', '.join(status.copies)}")
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    status = _manager(args).status()
    if args.json:
        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        print(render(status))
    return EXIT_OK


def _commit(args: argparse.Namespace) -> int:
    state = _manager(args).commit()
    print(f"committed slot {state.current} (version {state.versions[state.current or '']})")
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    manager = _manager(args)
    failure = manager.rollback(args.reason)
    state = manager.state()
    print(
        f"rolled back from slot {failure.slot} (version {failure.version}, now denied) "
        f"to slot {state.current} (version {state.versions[state.current or '']}); "
        "restart the appliance to run it"
    )
    return EXIT_OK


def _init(args: argparse.Namespace) -> int:
    manager = _manager(args)
    # Refuse an initialized root before touching the slot (adopt would, but later).
    transitions.adopt(manager.state(), args.slot, args.slot_version, {args.slot: args.slot_version})
    manager.mark_complete(args.slot, args.slot_version)
    manager.adopt(args.slot, args.slot_version)
    print(f"slot {args.slot} (version {args.slot_version}) is current and good")
    return EXIT_OK


def _boot(args: argparse.Namespace) -> int:
    report = _manager(args).on_start()
    if report.rolled_back is not None:
        failed = report.rolled_back
        print(
            f"version {failed.version} in slot {failed.slot} gave up ({failed.cause}); "
            f"booting slot {report.current} (version {report.version})"
        )
    elif report.action is StartAction.TRIAL:
        print(
            f"slot {report.current} (version {report.version}) on trial, "
            f"{report.tries_left} tries left after this one"
        )
    else:
        print(f"slot {report.current} (version {report.version})")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Refused as exc:
        print(f"firmware: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BadArgument as exc:
        print(f"firmware: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FirmwareError as exc:
        print(f"firmware: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"firmware: io_error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
