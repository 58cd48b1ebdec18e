"""`appliance task submit|get|cancel`: tasks through the running appliance's HTTP API.

The endpoint comes from `--url` or DATA_DIR/run/endpoints.json; the token from `--token`,
`$APPLIANCE_TOKEN`, or DATA_DIR/admin.token when this user may read it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from appliance.cli.common import USAGE, CliError, api_client, checked, say

WAIT_S = 20  # seconds a long poll is held; under the client's 30 s timeout


def register(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    task = commands.add_parser("task", help="submit, inspect and cancel tasks", parents=[parent])
    sub = task.add_subparsers(dest="task_command", required=True, metavar="COMMAND")
    client = argparse.ArgumentParser(add_help=False, parents=[parent])
    client.add_argument("--url", help="base URL (default: from DATA_DIR/run/endpoints.json)")
    client.add_argument("--token", help="API token (default: $APPLIANCE_TOKEN)")

    submit = sub.add_parser("submit", parents=[client], help="submit a task")
    submit.add_argument("kernel")
    submit.add_argument(
        "--input",
        required=True,
        metavar="JSON|@FILE|-",
        help='a JSON list of numbers or {"dtype","shape","data"}; @FILE or '
        "- reads it from a file or standard input",
    )
    submit.add_argument("--params", default="{}", metavar="JSON", help="kernel parameters")
    submit.add_argument("--priority", type=int, default=5, help="0-9, higher runs first")
    submit.add_argument("--timeout", type=float, help="seconds")
    submit.add_argument("--retries", type=int, help="retries for retryable failures")
    submit.add_argument("--key", help="idempotency key")
    submit.add_argument(
        "--wait", action="store_true", help="wait for the task to end and print its result"
    )
    submit.set_defaults(handler=submit_task)

    get = sub.add_parser("get", parents=[client], help="show a task")
    get.add_argument("task_id")
    get.add_argument("--result", action="store_true", help="print its result instead")
    get.set_defaults(handler=get_task)

    cancel = sub.add_parser("cancel", parents=[client], help="cancel a queued or running task")
    cancel.add_argument("task_id")
    cancel.set_defaults(handler=cancel_task)


def submit_task(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "kernel": args.kernel,
        "priority": args.priority,
        "params": _json_arg("--params", args.params),
        "input": _json_arg("--input", _read_input(args.input)),
    }
    for key, value in (
        ("timeout_s", args.timeout),
        ("max_retries", args.retries),
        ("idempotency_key", args.key),
    ):
        if value is not None:
            body[key] = value
    with api_client(args) as http:
        task = checked(http.post("/api/v1/tasks", json=body))
        if not args.wait:
            say(json.dumps(task, indent=2))
            return 0
        return _print_result(http, _wait(http, task["id"]))


def get_task(args: argparse.Namespace) -> int:
    with api_client(args) as http:
        task = checked(http.get(f"/api/v1/tasks/{args.task_id}"))
        if args.result:
            return _print_result(http, task)
    say(json.dumps(task, indent=2))
    return 0


def cancel_task(args: argparse.Namespace) -> int:
    with api_client(args) as http:
        task = checked(http.post(f"/api/v1/tasks/{args.task_id}/cancel"))
    say(json.dumps(task, indent=2))
    return 0


def _print_result(http: httpx.Client, task: dict) -> int:
    if task["state"] != "succeeded":
        error = task.get("error") or {}
        raise CliError(f"task {task['id']} {task['state']}: {error.get('message', '')}".strip())
    say(json.dumps(checked(http.get(f"/api/v1/tasks/{task['id']}/result")), indent=2))
    return 0


def _wait(http: httpx.Client, task_id: str) -> dict:
    """Long-poll the task until it ends (each request is held up to WAIT_S on the server)."""
    while True:
        task = checked(http.get(f"/api/v1/tasks/{task_id}", params={"wait": WAIT_S}))
        if task["finished"]:
            return task


def _read_input(value: str) -> str:
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text()
        except OSError as exc:
            raise CliError(f"cannot read {value[1:]}: {exc.strerror}", USAGE) from None
    return value


def _json_arg(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{name} is not valid JSON: {exc.msg}", USAGE) from None
