"""The `appliance` command line. Exit codes: 0 ok, 1 failure, 2 usage, 78 bad configuration."""

from __future__ import annotations

import argparse
import logging
import sys

import httpx

from appliance import __version__
from appliance.cli import admin, bus, config, run, status, tasks, tokens
from appliance.cli.common import BAD_CONFIG, FAILURE, CliError, add_settings_options
from appliance.runtime.errors import StartupError
from appliance.runtime.lock import AlreadyRunning
from appliance.settings import SettingsError
from appliance.store import StoreError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add_settings_options(parent)
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="The edge appliance: REST API, compute tasks, config replica, bus, OTA.",
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, status, tokens, tasks, config, admin, bus):
        module.register(commands, parent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SettingsError as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return BAD_CONFIG
    except (CliError, AlreadyRunning, StartupError, StoreError) as exc:
        print(f"appliance: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", FAILURE)
    except httpx.HTTPError as exc:
        print(f"appliance: cannot reach the appliance: {exc}", file=sys.stderr)
        return FAILURE
    except KeyboardInterrupt:
        return FAILURE
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        logging.getLogger("appliance").critical("appliance failed", exc_info=exc)
        return FAILURE
