"""`appliance bus pub|sub|call|peers`: the bus from a shell, speaking the bus protocol.

    appliance bus pub plant.line3.temp 21.5 --header unit=C
    appliance bus sub 'plant.>' --count 10 --json
    appliance bus call echo 'hello'           # the service echo: topic svc.echo
    appliance bus peers --selector 'role=sensor'

Each command connects with `appliance.bus.client` to the endpoint named by `--bus URL` (a
Unix socket path, `unix:///path` or `tcp://host:port`) or listed in the data dir's
`run/endpoints.json` (its Unix socket, else its TCP address), authenticating with
`--token`, `$APPLIANCE_TOKEN`, or DATA_DIR/admin.token when this user may read it.
Arguments the bus would refuse (a topic, pattern, group, header or selector) are checked
before connecting.

`pub` waits for the endpoint to have handled the publish (a discovery query after it
comes back only then), so a refusal is reported instead of lost. `sub` prints one line
per message, `TOPIC DATA` (DATA as UTF-8, bad bytes escaped) or with `--json` an object
with `data` (text) or `data_base64`; `call` writes the reply's bytes as they are.

Exit codes (sysexits where one fits): 0 ok; 1 failure (an error reply, the endpoint
ended the connection); 2 usage; 68 no endpoint found or reachable; 69 no responders;
75 timeout; 77 unauthenticated or forbidden; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from appliance.bus import messages as m
from appliance.bus.client import (
    BusClientError,
    ConnectionClosed,
    NoResponders,
    RequestFailed,
    RequestTimeout,
    open_client,
)
from appliance.bus.reasons import InvalidMessage
from appliance.bus.selectors import SelectorError, parse_selector
from appliance.bus.topics import SubscriptionIndex, TopicError, split_topic
from appliance.cli.common import FAILURE, OK, USAGE, CliError, say, settings_from
from appliance.runtime.endpoints import read_endpoints

NO_ENDPOINT, NO_RESPONDERS, TIMEOUT, NOT_ALLOWED, INTERRUPTED = 68, 69, 75, 77, 130
DEFAULT_CALL_TIMEOUT = 5.0
# A discovery query that matches no node: its answer tells `pub` the endpoint has handled
# everything sent before it.
FLUSH_SELECTOR = "appliance.invalid/cli-flush"


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    bus = commands.add_parser(
        "bus", help="publish, subscribe, call services and find peers on the bus", parents=[parent]
    )
    sub = bus.add_subparsers(dest="bus_command", required=True, metavar="COMMAND")
    client = argparse.ArgumentParser(add_help=False, parents=[parent])
    client.add_argument(
        "--bus",
        metavar="URL",
        help="the endpoint: a socket path, unix:///path or tcp://host:port "
        "(default: from DATA_DIR/run/endpoints.json)",
    )
    client.add_argument("--token", help="API token (default: $APPLIANCE_TOKEN)")
    client.add_argument("--name", help="connect as this node name (default: anonymous)")

    pub = sub.add_parser("pub", parents=[client], help="publish one message")
    pub.add_argument("topic", help="a topic, e.g. plant.line3.temp")
    pub.add_argument("message", help="the payload text, or - to read it from stdin")
    pub.add_argument("--retain", action="store_true", help="keep it as the topic's last value")
    pub.add_argument(
        "--header", action="append", default=[], metavar="K=V", help="a header (repeatable)"
    )
    pub.set_defaults(handler=lambda args: _run(args, _pub))

    subscribe = sub.add_parser("sub", parents=[client], help="print messages as they arrive")
    subscribe.add_argument("pattern", help="a pattern: * is one token, > the rest")
    subscribe.add_argument("--count", type=int, metavar="N", help="exit 0 after N messages")
    subscribe.add_argument("--group", metavar="G", help="join queue group G (one member each)")
    subscribe.add_argument("--json", action="store_true", help="one JSON object per line")
    subscribe.set_defaults(handler=lambda args: _run(args, _sub))

    call = sub.add_parser("call", parents=[client], help="call a service, print its reply")
    call.add_argument("service", help="echo (topic svc.echo), echo.upper, or a full svc.x.y")
    call.add_argument("payload", nargs="?", help="the request text, or - for stdin")
    call.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_CALL_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for the reply (default {DEFAULT_CALL_TIMEOUT:g})",
    )
    call.set_defaults(handler=lambda args: _run(args, _call))

    peers = sub.add_parser("peers", parents=[client], help="list the nodes on the bus")
    peers.add_argument("--selector", default="", metavar="S", help="label selector: k=v,!k,...")
    peers.add_argument("--json", action="store_true", help="print the node records as JSON")
    peers.set_defaults(handler=lambda args: _run(args, _peers))


# --- the commands --------------------------------------------------------------------------


async def _pub(args: argparse.Namespace, target: str, token: str) -> int:
    _checked(split_topic, args.topic)
    headers = _headers(args.header)
    data = _payload(args.message)
    async with open_client(target, token, name=args.name) as bus:
        await bus.publish(args.topic, data, retain=args.retain, headers=headers)
        await bus.query(FLUSH_SELECTOR)
    return OK


async def _sub(args: argparse.Namespace, target: str, token: str) -> int:
    if args.count is not None and args.count < 1:
        raise CliError("--count must be at least 1", USAGE)
    # The endpoint's own checks of the pattern and the group (a subscription index of one).
    _checked(lambda pattern: SubscriptionIndex().add(0, 0, pattern, args.group), args.pattern)
    seen = 0
    async with (
        open_client(target, token, name=args.name) as bus,
        await bus.subscribe(args.pattern, group=args.group) as subscription,
    ):
        async for message in subscription:
            _print_message(message, as_json=args.json)
            seen += 1
            if args.count is not None and seen >= args.count:
                return OK
    raise CliError("the endpoint ended the subscription", FAILURE)


async def _call(args: argparse.Namespace, target: str, token: str) -> int:
    topic = _service_topic(args.service)
    if not (0 < args.timeout <= m.MAX_TIMEOUT_US / 1_000_000) or math.isnan(args.timeout):
        raise CliError("--timeout must be above 0 and at most 86400 seconds", USAGE)
    data = _payload(args.payload) if args.payload is not None else b""
    async with open_client(target, token, name=args.name) as bus:
        reply = await bus.request(topic, data, timeout=args.timeout)
    sys.stdout.buffer.write(reply)
    sys.stdout.buffer.flush()
    return OK


async def _peers(args: argparse.Namespace, target: str, token: str) -> int:
    _checked(parse_selector, args.selector)
    async with open_client(target, token, name=args.name) as bus:
        nodes = sorted(await bus.query(args.selector), key=lambda node: node.name)
    if args.json:
        say(json.dumps([node.to_wire() for node in nodes], indent=2))
        return OK
    rows = [("NAME", "VERSION", "HOST", "PID", "LABELS")]
    for node in nodes:
        host = node.host
        labels = ",".join(f"{k}={v}" for k, v in sorted(node.labels.items()))
        rows.append(
            (
                node.name,
                node.version or "-",
                host.hostname if host else "-",
                str(host.pid) if host else "-",
                labels or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for *cells, labels in rows:
        say(
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + "  "
            + labels
        )
    return OK


# --- arguments -----------------------------------------------------------------------------


def _checked(check: Callable[[str], Any], text: str) -> Any:
    """`check(text)`, or a usage error naming what the bus would refuse."""
    try:
        return check(text)
    except (TopicError, SelectorError) as exc:
        raise CliError(f"{exc.code}: {exc}", USAGE) from None
    except InvalidMessage as exc:
        raise CliError(f"{exc.problem}: {exc.field}: {exc.detail}", USAGE) from None


def _headers(pairs: list[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--header {pair!r}: expected KEY=VALUE", USAGE)
        headers[key] = value
    _checked(lambda _: m.Publish(topic="x", headers=headers), "")
    return headers


def _payload(text: str) -> bytes:
    if text == "-":
        return sys.stdin.buffer.read()
    return text.encode("utf-8", "surrogateescape")  # argv bytes that are not UTF-8 stay as given


def _service_topic(service: str) -> str:
    """`echo` -> `svc.echo`, `echo.upper` -> `svc.echo.upper`, `svc.x.y` as it is."""
    topic = service if service.startswith("svc.") else f"svc.{service}"
    _checked(split_topic, topic)
    return topic


def _print_message(message: Any, *, as_json: bool) -> None:
    if not as_json:
        say(f"{message.topic} {message.data.decode('utf-8', 'backslashreplace')}")
        return
    record: dict[str, Any] = {"topic": message.topic}
    try:
        record["data"] = message.data.decode("utf-8")
    except UnicodeDecodeError:
        record["data_base64"] = base64.b64encode(message.data).decode()
    record.update(
        headers=message.headers,
        source=message.source,
        gap=message.gap,
        retained=message.retained,
    )
    say(json.dumps(record))


# --- where, who, and what went wrong -------------------------------------------------------


def bus_target(args: argparse.Namespace) -> str:
    """The endpoint to connect to: `--bus`, else the running appliance's endpoints.json."""
    if args.bus:
        return _parse_bus_url(args.bus)
    settings = settings_from(args)
    path = settings.data_dir / "run" / "endpoints.json"
    try:
        endpoints = read_endpoints(path)
    except (OSError, ValueError):
        raise CliError(
            f"no bus endpoint: the appliance is not running on {settings.data_dir} "
            "(no run/endpoints.json); pass --bus URL or --data-dir",
            NO_ENDPOINT,
        ) from None
    target = endpoints.get("bus_unix") or endpoints.get("bus_tcp")
    if not isinstance(target, str) or not target:
        raise CliError(f"{path} names no bus endpoint; pass --bus URL", NO_ENDPOINT)
    return target


def _parse_bus_url(url: str) -> str:
    if url.startswith("tcp://"):
        host, sep, port = url.removeprefix("tcp://").rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise CliError(f"--bus {url!r}: expected tcp://host:port", USAGE)
        return url
    if url.startswith("unix://"):
        if not url.removeprefix("unix://"):
            raise CliError(f"--bus {url!r}: expected unix:///path/to/bus.sock", USAGE)
        return url
    if "://" in url:
        raise CliError(
            f"--bus {url!r}: expected a socket path, unix:///path or tcp://host:port", USAGE
        )
    return url


def bus_token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get("APPLIANCE_TOKEN")
    if token:
        return token
    try:
        return (settings_from(args).data_dir / "admin.token").read_text().strip()
    except OSError:
        raise CliError("no token: pass --token or set APPLIANCE_TOKEN", USAGE) from None


Command = Callable[[argparse.Namespace, str, str], Awaitable[int]]


def _run(args: argparse.Namespace, command: Command) -> int:
    target = bus_target(args)
    token = bus_token(args)
    try:
        return trio.run(command, args, target, token)
    except BaseException as exc:  # every outcome becomes an exit code here
        leaves = _leaves(exc)
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            return INTERRUPTED
        if len(leaves) != 1 or isinstance(leaves[0], SystemExit):
            raise
        raise _translate(leaves[0], target) from None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _translate(exc: BaseException, target: str) -> BaseException:
    """A CLI error for what ended the command (anything unforeseen is raised as it is)."""
    match exc:
        case CliError():
            return exc
        case ConnectionClosed(reason="unauthenticated"):
            return CliError(f"unauthenticated: the bus refused the token ({exc.text})", NOT_ALLOWED)
        case ConnectionClosed(reason="forbidden"):
            return CliError(f"forbidden: {exc.text}", NOT_ALLOWED)
        case ConnectionClosed():
            return CliError(f"the endpoint closed the connection: {exc}", FAILURE)
        case NoResponders():
            return CliError(f"no responders: {exc.text}", NO_RESPONDERS)
        case RequestTimeout() | trio.TooSlowError():
            return CliError(f"timeout: {exc}" if str(exc) else "timeout", TIMEOUT)
        case RequestFailed(text=text) if text.startswith("forbidden"):
            return CliError(text, NOT_ALLOWED)
        case RequestFailed():
            return CliError(f"the service answered {exc}", FAILURE)
        case BusClientError():
            return CliError(str(exc), FAILURE)
        case BrokenPipeError():
            return CliError("stdout was closed", FAILURE)
        case OSError():
            return CliError(f"cannot reach the bus at {target}: {_reason(exc)}", NO_ENDPOINT)
    return exc


def _reason(exc: BaseException) -> str:
    """An OSError's reason; trio's "all attempts to connect failed" has them in its cause."""
    for leaf in _leaves(exc.__cause__) if exc.__cause__ is not None else ():
        if isinstance(leaf, OSError) and leaf.strerror:
            return leaf.strerror
    return getattr(exc, "strerror", None) or str(exc)
