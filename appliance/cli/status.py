"""`appliance status`: ask the running appliance for its health."""

from __future__ import annotations

import argparse
import json

import httpx

from appliance.cli.common import CliError, say, settings_from
from appliance.runtime.endpoints import read_endpoints


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    status = commands.add_parser(
        "status", parents=[parent], help="show the running appliance's health"
    )
    status.add_argument("--url", help="base URL (default: from DATA_DIR/run/endpoints.json)")
    status.add_argument("--json", action="store_true", help="print the raw health document")
    status.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:
    url = args.url
    if url is None:
        settings = settings_from(args)
        try:
            url = read_endpoints(settings.data_dir / "run" / "endpoints.json")["http"]
        except (OSError, ValueError, KeyError):
            raise CliError(
                f"the appliance is not running on {settings.data_dir} "
                "(no run/endpoints.json); pass --url to ask another"
            ) from None
    try:
        response = httpx.get(f"{url.rstrip('/')}/api/v1/health", timeout=5.0, verify=False)
        health = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise CliError(f"cannot reach the appliance at {url}: {exc}") from None
    if args.json:
        say(json.dumps(health, indent=2))
    else:
        say(f"{health['status']}  version {health['version']}  up {health['uptime_s']:.0f} s")
        for name, component in health.get("components", {}).items():
            say(f"  {name:<10}{component['status']:<10}{component['detail']}")
    return 0 if health.get("status") == "ok" else 1
