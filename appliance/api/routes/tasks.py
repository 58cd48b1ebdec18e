"""Kernels and tasks: list kernels, submit, inspect, cancel, fetch results, scheduler."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import trio
from quart import Blueprint, Response, g, jsonify, request

from appliance.api.bodies import Field, parse_json, validate
from appliance.api.guard import context, requires
from appliance.api.longpoll import hold, wait_seconds
from appliance.api.problems import Problem
from appliance.kernels import InputError, ParamError
from appliance.tasks import InputFormatError, QueueFull, Task, TaskState, parse_input
from appliance.tasks.inputs import storable_to_json

blueprint = Blueprint("tasks", __name__)
CBOR = "application/cbor"

NEW_TASK = {
    "kernel": Field(str, max_length=64),
    "params": Field(dict, required=False),
    "input": Field((list, dict)),
    "priority": Field(int, required=False, minimum=0, maximum=9),
    "timeout_s": Field((int, float), required=False, minimum=0.001, maximum=86400),
    "max_retries": Field(int, required=False, minimum=0, maximum=10),
    "idempotency_key": Field(str, required=False, min_length=1, max_length=128, printable=True),
}


def scheduler():
    found = context().scheduler
    if found is None:
        raise Problem(503, "tasks_unavailable", "the task scheduler is not running")
    return found


@blueprint.get("/api/v1/kernels")
@requires("viewer")
async def list_kernels() -> Response:
    kernels = context().kernels
    return jsonify(
        {"kernels": [{"name": k.name, "summary": k.summary} for _, k in sorted(kernels.items())]}
    )


@blueprint.get("/api/v1/kernels/<name>")
@requires("viewer")
async def describe_kernel(name: str) -> Response:
    kernel = context().kernels.get(name)
    if kernel is None:
        raise Problem(404, "kernel_not_found", f"no kernel {name!r}")
    return jsonify(kernel.describe())


# Bodies and results above this size are decoded and encoded in a worker thread, so a
# 60 MB submission or a 10⁷-sample result never stalls the event loop.
THREAD_ABOVE_BYTES = 64 * 1024


def decode_submission(
    raw: bytes, content_type: str | None, kernels: dict, max_samples: int
) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    """Body bytes -> (kernel, checked params, checked input array, body). Raises Problem."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == CBOR:
        try:
            document = cbor2.loads(raw)
        except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError, OverflowError):
            raise Problem(400, "malformed_cbor", "the body is not valid CBOR") from None
    else:
        document = parse_json(raw, content_type)
    body = validate(document, NEW_TASK)
    kernel = kernels.get(body["kernel"])
    if kernel is None:
        raise Problem(
            422,
            "unknown_kernel",
            f"no kernel {body['kernel']!r}",
            errors=[{"field": "kernel", "message": "unknown kernel"}],
        )
    try:
        params = kernel.check_params(body.get("params"))
        data = kernel.check_input(parse_input(body["input"], max_samples=max_samples))
    except ParamError as exc:
        raise Problem(422, "invalid_params", str(exc), errors=exc.errors) from None
    except InputFormatError as exc:
        raise Problem(
            exc.status, exc.code, str(exc), errors=[{"field": "input", "message": str(exc)}]
        ) from None
    except InputError as exc:
        raise Problem(
            422, exc.code, str(exc), errors=[{"field": "input", "message": str(exc)}]
        ) from None
    return kernel, params, data, body


async def off_loop_if_large(size: int, fn, *args):
    if size > THREAD_ABOVE_BYTES:
        return await trio.to_thread.run_sync(fn, *args)
    return fn(*args)


async def submit_checked(
    tasks: Any,
    kernel: Any,
    params: dict[str, Any],
    data: Any,
    body: dict[str, Any],
    *,
    default_timeout_s: float,
    submitted_by: str,
) -> tuple[Task, bool]:
    """Submit what `decode_submission` checked, with the body's options and their
    defaults; (task, created). Problem 503 `queue_full` when the queue is full. The HTTP
    route and the bus's `svc.tasks.submit` both submit through here."""
    try:
        return await tasks.submit(
            kernel.name,
            params,
            data,
            priority=body.get("priority", 5),
            timeout_s=float(body.get("timeout_s", default_timeout_s)),
            max_retries=body.get("max_retries", 2),
            idempotency_key=body.get("idempotency_key"),
            submitted_by=submitted_by,
        )
    except QueueFull as exc:
        raise Problem(503, "queue_full", str(exc), headers={"Retry-After": "5"}) from None


@blueprint.post("/api/v1/tasks")
@requires("operator")
async def submit_task() -> tuple[Response, int]:
    ctx = context()
    raw = await request.get_data()
    kernel, params, data, body = await off_loop_if_large(
        len(raw),
        decode_submission,
        raw,
        request.content_type,
        ctx.kernels,
        ctx.settings().tasks.max_input_samples,
    )
    task, created = await submit_checked(
        scheduler(),
        kernel,
        params,
        data,
        body,
        default_timeout_s=ctx.settings().tasks.default_timeout_s,
        submitted_by=g.principal.label,
    )
    g.audit_target = f"task:{task.id}"
    return jsonify(task.public()), 202 if created else 200


def _task_or_404(task_id: str) -> Task:
    task = scheduler().repository.get(task_id)
    if task is None:
        raise Problem(404, "task_not_found", f"no task {task_id!r}")
    return task


@blueprint.get("/api/v1/tasks")
@requires("viewer")
async def list_tasks() -> Response:
    state = request.args.get("state")
    if state is not None and state not in {s.value for s in TaskState}:
        raise Problem(
            422,
            "validation_failed",
            "unknown state",
            errors=[{"field": "state", "message": "unknown state"}],
        )
    raw_limit = request.args.get("limit", "100")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 1000:
        raise Problem(
            422,
            "validation_failed",
            "limit must be 1-1000",
            errors=[{"field": "limit", "message": "expected 1-1000"}],
        )
    before = request.args.get("before")
    if before is not None and (not (before.isascii() and before.isalnum()) or len(before) > 64):
        raise Problem(
            422,
            "validation_failed",
            "before must be a task id",
            errors=[{"field": "before", "message": "expected a task id"}],
        )
    tasks = scheduler().repository.list(state=state, limit=int(raw_limit), before=before)
    return jsonify({"tasks": [task.public() for task in tasks]})


@blueprint.get("/api/v1/tasks/<task_id>")
@requires("viewer")
async def get_task(task_id: str) -> Response:
    return jsonify((await _task_when_finished(task_id)).public())


async def _task_when_finished(task_id: str) -> Task:
    """The task, after holding the request until it ends when `?wait=S` asks for that."""
    seconds = wait_seconds(request.args)
    task = _task_or_404(task_id)
    if not task.finished and seconds > 0:
        await hold(lambda: scheduler().until_finished(task_id), seconds, context().stopping)
        task = _task_or_404(task_id)
    return task


@blueprint.get("/api/v1/tasks/<task_id>/result")
@requires("viewer")
async def get_result(task_id: str) -> Response:
    task = await _task_when_finished(task_id)
    if not task.finished:
        raise Problem(
            409, "task_not_finished", f"task {task_id} is {task.state}", state=str(task.state)
        )
    stored = scheduler().repository.result(task_id)
    if stored is None:
        raise Problem(
            409,
            "task_has_no_result",
            f"task {task_id} ended {task.state}",
            state=str(task.state),
            error=task.error,
        )
    body = {"task_id": task.id, "kernel": task.kernel}
    size = sum(len(v["data"]) for v in stored.values() if isinstance(v, dict) and "data" in v)
    wanted = request.accept_mimetypes.best_match(
        ["application/json", CBOR], default="application/json"
    )
    if wanted == CBOR:
        payload = await off_loop_if_large(size, cbor2.dumps, {**body, "outputs": stored})
        return Response(payload, content_type=CBOR)
    payload = await off_loop_if_large(size, render_result_json, body, stored)
    return Response(payload, content_type="application/json")


def render_result_json(body: dict[str, Any], stored: dict[str, Any]) -> bytes:
    return json.dumps({**body, "outputs": storable_to_json(stored)}).encode()


@blueprint.post("/api/v1/tasks/<task_id>/cancel")
@requires("operator")
async def cancel_task(task_id: str) -> Response:
    task = _task_or_404(task_id)
    if task.finished:
        raise Problem(
            409,
            "task_finished",
            f"task {task_id} already ended {task.state}",
            state=str(task.state),
        )
    g.audit_target = f"task:{task_id}"
    return jsonify((await scheduler().cancel(task)).public())


@blueprint.get("/api/v1/scheduler")
@requires("viewer")
async def scheduler_status() -> Response:
    return jsonify(scheduler().status())
