"""`appliance status`: ask the running appliance for its health."""

from __future__ import annotations

import argparse
import json

import httpx

from appliance.cli.common import CliError, running_url, say, settings_from


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    status = commands.add_parser(
        "status", parents=[parent], help="show the running appliance's health"
    )
    status.add_argument("--url", help="base URL (default: from DATA_DIR/run/endpoints.json)")
    status.add_argument("--json", action="store_true", help="print the raw health document")
    status.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:
    url = args.url or running_url(settings_from(args))
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
