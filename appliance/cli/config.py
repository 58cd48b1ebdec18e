"""`appliance config get|put|release|watch`: the config replica through the HTTP API.

The endpoint comes from `--url` or DATA_DIR/run/endpoints.json; the token from `--token`,
`$APPLIANCE_TOKEN`, or DATA_DIR/admin.token when this user may read it. With `--etcd URL`,
`put` and `release` write into an etcd cluster instead, in the layout replicas of etcd
follow (docs/config.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from appliance.cli.common import (
    FAILURE,
    USAGE,
    CliError,
    api_client,
    checked,
    local_actor,
    say,
    settings_from,
)
from appliance.config.errors import ConfigError
from appliance.config.keys import parse_key
from appliance.config.model import FORMATS

# A watch is quiet for at most the server's keep-alive interval (15 s) between lines.
WATCH_READ_TIMEOUT_S = 60.0


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    config = commands.add_parser(
        "config", help="read, write, release and watch config keys", parents=[parent]
    )
    sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    client = argparse.ArgumentParser(add_help=False, parents=[parent])
    client.add_argument("--url", help="base URL (default: from DATA_DIR/run/endpoints.json)")
    client.add_argument("--token", help="API token (default: $APPLIANCE_TOKEN)")
    etcd = argparse.ArgumentParser(add_help=False)
    etcd.add_argument("--etcd", metavar="URL", help="write into this etcd cluster instead")
    etcd.add_argument(
        "--etcd-prefix", metavar="PREFIX", help="etcd key prefix (default: config.etcd_prefix)"
    )

    get = sub.add_parser("get", parents=[client], help="print the content this box gets")
    get.add_argument("key", help="tenant/app/env/name")
    which = get.add_mutually_exclusive_group()
    which.add_argument(
        "--explain", action="store_true", help="say which release rule applies, and why"
    )
    which.add_argument("--version", type=int, metavar="N", help="print version N instead")
    get.set_defaults(handler=get_config)

    put = sub.add_parser("put", parents=[client, etcd], help="add a version of a key")
    put.add_argument("key", help="tenant/app/env/name")
    put.add_argument(
        "stdin", nargs="?", choices=["-"], metavar="-", help="read the content from stdin"
    )
    put.add_argument("--file", type=Path, help="read the content from this file")
    put.add_argument("--content", help="the content itself")
    put.add_argument("--format", required=True, choices=FORMATS)
    put.add_argument("--comment", default="", help="why this version")
    put.set_defaults(handler=put_config)

    release = sub.add_parser("release", parents=[client, etcd], help="set a key's release rules")
    release.add_argument("key", help="tenant/app/env/name")
    release.add_argument(
        "--rules",
        required=True,
        metavar="JSON|@FILE",
        help='[{"labels": {...}, "version": N, "priority": P, "percent": X}, ...]',
    )
    release.set_defaults(handler=release_config)

    watch = sub.add_parser("watch", parents=[client], help="print changes as they happen")
    watch.add_argument("--prefix", default="", help="only keys starting with this")
    watch.add_argument("--count", type=int, metavar="N", help="stop after N changes")
    watch.add_argument(
        "--after", type=int, metavar="REV", help="start after this revision (default: now)"
    )
    watch.set_defaults(handler=watch_config)


def get_config(args: argparse.Namespace) -> int:
    key = _key(args.key)
    with api_client(args) as http:
        if args.explain:
            say(json.dumps(checked(http.get(f"/api/v1/config/{key}/explain")), indent=2))
            return 0
        if args.version is not None:
            version = checked(http.get(f"/api/v1/config/{key}/versions/{args.version}"))
            _write(version["content"].encode())
            return 0
        response = http.get(f"/api/v1/config/{key}")
        if response.status_code >= 400:
            checked(response)
    _write(response.content)
    return 0


def put_config(args: argparse.Namespace) -> int:
    key = _key(args.key)
    content = _content(args)
    if args.etcd:
        from appliance.config import etcd  # only this command needs it

        settings = settings_from(args)
        number = _etcd_call(
            etcd.publish_version,
            args.etcd,
            args.etcd_prefix or settings.config.etcd_prefix,
            key,
            args.format,
            content,
            comment=args.comment,
            author=local_actor(),
            max_content_bytes=settings.config.max_content_bytes,
        )
        say(json.dumps({"key": key, "version": number, "etcd": args.etcd}))
        return 0
    body = {"format": args.format, "content": content}
    if args.comment:
        body["comment"] = args.comment
    with api_client(args) as http:
        created = checked(http.post(f"/api/v1/config/{key}/versions", json=body))
    say(json.dumps(created, indent=2))
    return 0


def release_config(args: argparse.Namespace) -> int:
    key = _key(args.key)
    rules = _rules(args.rules)
    if args.etcd:
        from appliance.config import etcd  # only this command needs it

        prefix = args.etcd_prefix or settings_from(args).config.etcd_prefix
        _etcd_call(etcd.publish_rules, args.etcd, prefix, key, rules)
        say(json.dumps({"key": key, "rules": rules, "etcd": args.etcd}))
        return 0
    with api_client(args) as http:
        stored = checked(http.put(f"/api/v1/config/{key}/releases", json={"rules": rules}))
    say(json.dumps(stored, indent=2))
    return 0


def watch_config(args: argparse.Namespace) -> int:
    """One JSON line per change; ends after --count changes, or with an error when the
    server resets or ends the stream."""
    if args.count is not None and args.count < 1:
        raise CliError("--count must be at least 1", USAGE)
    params: dict[str, Any] = {"prefix": args.prefix}
    if args.after is not None:
        params["after"] = args.after
    seen = 0
    with (
        api_client(args, timeout=httpx.Timeout(30.0, read=WATCH_READ_TIMEOUT_S)) as http,
        http.stream("GET", "/api/v1/config/watch", params=params) as response,
    ):
        if response.status_code != 200:
            response.read()
            checked(response)
        for event in _events(response.iter_lines()):
            if event.get("event") == "reset":
                detail = json.loads(event.get("data", "{}"))
                raise CliError(
                    f"{detail.get('reason', 'reset')}: {detail.get('detail', '')} "
                    "(watch again, without --after)"
                )
            if event.get("event") != "change":
                continue
            say(event["data"])
            seen += 1
            if args.count is not None and seen >= args.count:
                return 0
    raise CliError("the appliance ended the watch (is it stopping?)", FAILURE)


def _events(lines: Any) -> Any:
    """Server-Sent Events from lines: {field: value}, comments skipped."""
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def _key(text: str) -> str:
    try:
        return str(parse_key(text))
    except ConfigError as exc:
        raise CliError(f"{text!r}: {exc.message}", USAGE) from None


def _content(args: argparse.Namespace) -> str:
    given = [x for x in (args.file, args.content, args.stdin) if x is not None]
    if len(given) != 1:
        raise CliError("give the content one way: --file F, --content TEXT, or -", USAGE)
    if args.stdin:
        return sys.stdin.read()
    if args.file is not None:
        try:
            return args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise CliError(f"cannot read {args.file}: {reason}", USAGE) from None
    return args.content


def _rules(value: str) -> list:
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise CliError(f"cannot read {value[1:]}: {reason}", USAGE) from None
    try:
        rules = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--rules is not valid JSON: {exc.msg}", USAGE) from None
    if isinstance(rules, dict) and set(rules) == {"rules"}:
        rules = rules["rules"]  # the body of GET .../releases, as saved
    if not isinstance(rules, list):
        raise CliError('--rules must be a JSON list of {"version", "priority", ...}', USAGE)
    return rules


def _etcd_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        raise CliError(f"{exc.code}: {exc.message}") from None


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
