"""What every subcommand shares: exit codes, settings, opening the local store."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from appliance.runtime.endpoints import read_endpoints
from appliance.settings import Settings, SettingsSources, load_settings
from appliance.store import Store, StoreError

OK, FAILURE, USAGE, BAD_CONFIG = 0, 1, 2, 78


class CliError(Exception):
    """A failure to report as one line on stderr, with an exit code."""

    def __init__(self, message: str, exit_code: int = FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="settings file (default: $APPLIANCE_CONFIG, /etc/appliance/appliance.toml)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="data directory (default: $STATE_DIRECTORY or ~/.local/state/appliance)",
    )


def sources_from(args: argparse.Namespace, **overrides: Any) -> SettingsSources:
    flat = {key: value for key, value in overrides.items() if value is not None}
    if getattr(args, "data_dir", None) is not None:
        flat["data.dir"] = str(args.data_dir)
    return SettingsSources(config_file=args.config, overrides=flat)


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(sources_from(args))


def open_local_store(settings: Settings, *, readonly: bool = False) -> Store:
    path = settings.data_dir / "store"
    if not (path / "data.mdb").exists():
        raise CliError(
            f"no appliance data in {settings.data_dir} "
            "(start `appliance run` once, or pass --data-dir)"
        )
    try:
        return Store.open(path, readonly=readonly)
    except StoreError as exc:
        raise CliError(str(exc)) from None


def running_url(settings: Settings) -> str:
    """The HTTP URL of the appliance running on this data dir (its run/endpoints.json)."""
    try:
        return read_endpoints(settings.data_dir / "run" / "endpoints.json")["http"]
    except (OSError, ValueError, KeyError):
        raise CliError(
            f"the appliance is not running on {settings.data_dir} "
            "(no run/endpoints.json); pass --url"
        ) from None


def local_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def say(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def api_client(args: argparse.Namespace, timeout: Any = 30.0) -> httpx.Client:
    """An HTTP client for the running appliance: `--url` or DATA_DIR/run/endpoints.json;
    the token from `--token`, `$APPLIANCE_TOKEN` or DATA_DIR/admin.token."""
    settings = settings_from(args)
    url = args.url or running_url(settings)
    token = args.token or os.environ.get("APPLIANCE_TOKEN")
    if not token:
        try:
            token = (settings.data_dir / "admin.token").read_text().strip()
        except OSError:
            raise CliError("no token: pass --token or set APPLIANCE_TOKEN", USAGE) from None
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)


def checked(response: httpx.Response) -> dict:
    """The JSON body of a success; CliError `code: detail` for a problem."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 400:
        code = body.get("code", f"http_{response.status_code}")
        raise CliError(f"{code}: {body.get('detail', response.text[:200])}")
    return body
