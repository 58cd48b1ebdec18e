"""`appliance run`: the service."""

from __future__ import annotations

import argparse
import logging
import os

from appliance.cli.common import sources_from
from appliance.runtime.activation import listen_fds_http
from appliance.runtime.logs import configure_logging
from appliance.settings import load_settings


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    run_parser = commands.add_parser("run", parents=[parent], help="run the appliance service")
    run_parser.add_argument(
        "--http", metavar="HOST:PORT", help="HTTP listen address (port 0 picks a free port)"
    )
    run_parser.add_argument("--bus-tcp", metavar="HOST:PORT", help="bus TCP listen address")
    run_parser.add_argument("--bus-unix", metavar="PATH", help="bus Unix socket path")
    run_parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run_parser.set_defaults(handler=run_service)


def run_service(args: argparse.Namespace) -> int:
    http = args.http
    if http is None:
        inherited = listen_fds_http(dict(os.environ), os.getpid())
        if inherited is not None:  # socket activation: systemd holds the port for us
            http = f"fd://{inherited}"
    sources = sources_from(
        args,
        **{
            "http.listen": http,
            "bus.tcp": args.bus_tcp,
            "bus.unix": args.bus_unix,
            "log.level": args.log_level,
        },
    )
    from appliance.runtime.main import run  # the whole service: imported only to run it

    settings = load_settings(sources)
    configure_logging(settings.log.level)
    if settings.config_file is not None:
        logging.getLogger("appliance").info("settings from %s", settings.config_file)
    return run(settings, sources)
