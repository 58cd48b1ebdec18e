"""The appliance's built-in services on its own bus: config, tasks and health.

    services = BusServices(endpoint, health=..., config=..., scheduler=..., kernels=...)
    await nursery.start(services.serve)   # after the endpoint listens; ready = answering
    ...
    await services.stop()                 # before the endpoint stops

They are an ordinary bus client of the endpoint, connected over a socket pair
(`BusEndpoint.connect_internal`: no file, no port, no token on disk) with a principal
that may serve `svc.config`, `svc.tasks`, `svc.health` and publish `config.changed.>`.
So callers go through the endpoint like any request: their token needs publish
permission on the service's topic, deadlines and `no_responders` work as for any
service, and the services share calls in the queue group `_appliance`.

| topic | request (JSON) | reply (JSON) |
|---|---|---|
| `svc.config.get` | `{"key": "t/a/e/n"}` | `{key, content, format, version, sha256, revision}` |
| `svc.tasks.submit` | the body of `POST /api/v1/tasks` | the task, as `GET /api/v1/tasks/{id}` |
| `svc.tasks.get` | `{"id"}` | the task |
| `svc.tasks.result` | `{"id", "wait"?: seconds}` | `{"task_id", "kernel", "outputs"}` |
| `svc.tasks.cancel` | `{"id"}` | the task |
| `svc.health` | anything (ignored) | the body of `GET /api/v1/health` |

The config service is there when the config replica is, the task services when the task
scheduler is. An error is an error reply whose text is `<code>: <detail>`, with the code
the HTTP API gives the same mistake (`malformed_json`, `validation_failed`,
`key_not_found`, `unknown_kernel`, `task_not_found`, ...), plus `unknown_method` and
`internal_error` (a bug: logged with its traceback; the services carry on).

**Config changes** are published on `config_topic(key)`: `config.changed.<tenant>.<app>.
<env>.<name>`, each key segment one topic token. Key segments may hold `.`, which topic
tokens may not, and never `:`, which they may: so `.` is written `:` (`acme/pump/prod/
limits.v2` -> `config.changed.acme.pump.prod.limits:v2`), one to one. A key whose topic
would pass 255 characters is published on `config.changed._long`, and when the change
log no longer reaches back (a snapshot was installed) one message on
`config.changed._snapshot` says to re-read everything (a tenant never starts with `_`, so
neither collides with a key). The body is `{"key", "revision", "op", "version",
"sha256"}`: the change's revision and kind (`version` or `rules`) and this box's
effective version of the key after it (`null` when the key is not released to this box).

**Lifecycle.** `serve` reports started once its subscriptions are in place (it has
called its own `svc.health` through the endpoint). Should the connection end before
`stop` (it never should), it reconnects after `RECONNECT_S` and publishes the changes it
missed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from appliance.api.bodies import Field, parse_json, validate
from appliance.api.longpoll import MAX_WAIT_S
from appliance.api.problems import Problem
from appliance.api.routes.tasks import (
    decode_submission,
    off_loop_if_large,
    render_result_json,
    submit_checked,
)
from appliance.bus.client import BusClient, BusClientError, IncomingRequest, ServiceError
from appliance.bus.endpoint import BusEndpoint
from appliance.bus.principal import BusPrincipal
from appliance.bus.topics import MAX_TOPIC_LENGTH
from appliance.config.errors import ConfigError
from appliance.config.keys import MAX_KEY_LENGTH, ConfigKey, parse_key
from appliance.config.service import ConfigService
from appliance.tasks import Task

if TYPE_CHECKING:  # the runtime imports this module
    from appliance.config.changes import Change
    from appliance.kernels import Kernel
    from appliance.runtime.health import Health
    from appliance.tasks import Scheduler

log = logging.getLogger("appliance.bus")

GROUP = "_appliance"
CHANGED = "config.changed"
LONG_KEY_TOPIC = f"{CHANGED}._long"
SNAPSHOT_TOPIC = f"{CHANGED}._snapshot"
REPLY_MARGIN_S = 0.25  # a long wait ends this long before the caller's deadline
RECONNECT_S = 1.0
READY_TIMEOUT_S = 10.0
FRAME_OVERHEAD = 4096  # head and fields around a reply's data, generously

TASK_ID = Field(str, min_length=1, max_length=64)
GET_KEY = {"key": Field(str, max_length=MAX_KEY_LENGTH)}
BY_ID = {"id": TASK_ID}
RESULT = {"id": TASK_ID, "wait": Field((int, float), required=False, minimum=0, maximum=MAX_WAIT_S)}

Method = Callable[[IncomingRequest], Awaitable[Any]]


def config_topic(key: str | ConfigKey) -> str:
    """The topic a key's changes are published on (see the module docstring)."""
    segments = str(key).split("/")
    topic = ".".join((CHANGED, *(segment.replace(".", ":") for segment in segments)))
    return topic if len(topic) <= MAX_TOPIC_LENGTH else LONG_KEY_TOPIC


def service_error(exc: Exception) -> ServiceError:
    """The error reply for what a handler raised: the HTTP API's code for the same
    mistake (a `Problem` or a `ConfigError`), else `internal_error`."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, Problem):
        errors = exc.extra.get("errors") or []
        fields = "; ".join(f"{e.get('field') or 'body'}: {e.get('message')}" for e in errors)
        return ServiceError(exc.code, f"{exc.detail} ({fields})" if fields else exc.detail)
    if isinstance(exc, ConfigError):
        return ServiceError(exc.code, exc.message)
    return ServiceError("internal_error", f"{type(exc).__name__}: {exc}")


def request_body(data: bytes, shape: dict[str, Field]) -> dict[str, Any]:
    """A JSON object of `shape`, checked as the HTTP API checks its bodies."""
    return validate(parse_json(data, "application/json"), shape)


def reply_json(document: Any) -> bytes:
    return json.dumps(document).encode()


class BusServices:
    def __init__(
        self,
        endpoint: BusEndpoint,
        *,
        health: Health,
        config: ConfigService | None = None,
        scheduler: Scheduler | None = None,
        kernels: dict[str, Kernel] | None = None,
        default_timeout_s: float = 60.0,
        max_input_samples: int = 1 << 20,
        max_frame: int = 1 << 20,
    ) -> None:
        self.endpoint = endpoint
        self.health = health
        self.config = config
        self.scheduler = scheduler
        self.kernels = kernels or {}
        self.default_timeout_s = default_timeout_s
        self.max_input_samples = max_input_samples
        self.max_reply = max_frame - FRAME_OVERHEAD
        self.node_name = f"{endpoint.node.name[:240]}.services"
        self.methods: dict[str, Method] = {"svc.health": self._health}
        if config is not None:
            self.methods["svc.config.get"] = self._config_get
        if scheduler is not None:
            self.methods.update(
                {
                    "svc.tasks.submit": self._tasks_submit,
                    "svc.tasks.get": self._tasks_get,
                    "svc.tasks.result": self._tasks_result,
                    "svc.tasks.cancel": self._tasks_cancel,
                }
            )
        self.services = sorted({topic.split(".")[1] for topic in self.methods})
        subscribe = [p for s in self.services for p in (f"svc.{s}", f"svc.{s}.>")]
        self.principal = BusPrincipal.with_patterns(
            self.node_name, "system", [f"{CHANGED}.>", "svc.health"], subscribe
        )
        self._published = config.notifier.revision if config is not None else 0
        self._stop = trio.Event()
        self._stopped = trio.Event()

    # --- lifecycle -----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED):
        """Serve until `stop()`; started() once the endpoint routes calls to us."""
        try:
            started = False
            while not self._stop.is_set():
                try:
                    await self._session(None if started else task_status)
                except* BusClientError as group:  # from the session's nursery
                    if not started:
                        raise
                    log.error("bus services: %s", group.exceptions[0])
                started = True
                if not self._stop.is_set():
                    log.error("bus services: disconnected; reconnecting in %.0f s", RECONNECT_S)
                    with trio.move_on_after(RECONNECT_S):
                        await self._stop.wait()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Say goodbye to the endpoint and end `serve` (the caller bounds the wait)."""
        self._stop.set()
        await self._stopped.wait()

    async def _session(self, task_status: trio.TaskStatus[None] | None) -> None:
        """One connection: serve, publish changes, until `stop` or the connection ends."""
        try:
            stream, secret = self.endpoint.connect_internal(self.principal)
        except RuntimeError:  # the endpoint is stopping
            self._stop.set()
            return
        async with trio.open_nursery() as nursery:
            client = await BusClient.over(nursery, stream, secret, name=self.node_name)
            for service in self.services:
                await client.serve(service, self._dispatch, group=GROUP)
            # Our own call comes back only once the endpoint has read our subscriptions.
            await client.request("svc.health", b"", timeout=READY_TIMEOUT_S)
            if task_status is not None:
                task_status.started()
            if self.config is not None:
                nursery.start_soon(self._publish_changes, client, self.config)
            async with trio.open_nursery() as first:
                for wait in (self._stop.wait, client.wait_closed):
                    first.start_soon(_then_cancel, wait, first.cancel_scope)
            await client.aclose()
            nursery.cancel_scope.cancel()

    # --- requests ------------------------------------------------------------------------

    async def _dispatch(self, request: IncomingRequest) -> bytes:
        method = self.methods.get(request.topic)
        if method is None:
            known = ", ".join(sorted(self.methods))
            raise ServiceError("unknown_method", f"no {request.topic} here; known: {known}")
        try:
            reply = await method(request)
        except Exception as exc:
            error = service_error(exc)
            if error.code == "internal_error":
                log.exception("bus services: %s failed", request.topic)
            raise error from None
        if isinstance(reply, bytes):
            return reply
        return reply_json(reply)

    async def _health(self, request: IncomingRequest) -> dict[str, Any]:
        return self.health.snapshot()

    async def _config_get(self, request: IncomingRequest) -> dict[str, Any]:
        assert self.config is not None
        key = parse_key(request_body(request.data, GET_KEY)["key"])
        version, _ = self.config.effective(key)
        return {
            "key": str(key),
            "content": version.content,
            "format": version.format,
            "version": version.number,
            "sha256": version.sha256,
            "revision": self.config.notifier.revision,
        }

    async def _tasks_submit(self, request: IncomingRequest) -> dict[str, Any]:
        kernel, params, data, body = await off_loop_if_large(
            len(request.data),
            decode_submission,
            request.data,
            "application/json",
            self.kernels,
            self.max_input_samples,
        )
        task, _ = await submit_checked(  # a full queue: Problem queue_full, as over HTTP
            self.scheduler,
            kernel,
            params,
            data,
            body,
            default_timeout_s=self.default_timeout_s,
            submitted_by=f"bus:{request.source or 'anonymous'}",
        )
        return task.public()

    def _task(self, task_id: str) -> Task:
        task = self.scheduler.repository.get(task_id)
        if task is None:
            raise ServiceError("task_not_found", f"no task {task_id!r}")
        return task

    async def _tasks_get(self, request: IncomingRequest) -> dict[str, Any]:
        return self._task(request_body(request.data, BY_ID)["id"]).public()

    async def _tasks_result(self, request: IncomingRequest) -> bytes:
        body = request_body(request.data, RESULT)
        task = self._task(body["id"])
        wait = float(body.get("wait", 0))
        if not task.finished and wait > 0:
            until = min(trio.current_time() + wait, request.deadline - REPLY_MARGIN_S)
            with trio.move_on_at(until):
                await self.scheduler.until_finished(task.id)
            task = self._task(task.id)
        if not task.finished:
            raise ServiceError("task_not_finished", f"task {task.id} is {task.state}")
        stored = self.scheduler.repository.result(task.id)
        if stored is None:
            raise ServiceError("task_has_no_result", f"task {task.id} ended {task.state}")
        size = sum(len(v["data"]) for v in stored.values() if isinstance(v, dict) and "data" in v)
        head = {"task_id": task.id, "kernel": task.kernel}
        payload = await off_loop_if_large(size, render_result_json, head, stored)
        if len(payload) > self.max_reply:
            raise ServiceError(
                "result_too_large",
                f"{len(payload)} bytes is over the bus's frame limit; "
                f"GET /api/v1/tasks/{task.id}/result",
            )
        return payload

    async def _tasks_cancel(self, request: IncomingRequest) -> dict[str, Any]:
        task = self._task(request_body(request.data, BY_ID)["id"])
        if task.finished:
            raise ServiceError("task_finished", f"task {task.id} already ended {task.state}")
        return (await self.scheduler.cancel(task)).public()

    # --- config changes ------------------------------------------------------------------

    async def _publish_changes(self, client: BusClient, config: ConfigService) -> None:
        """Publish every change after `_published` as it comes, until the notifier closes
        (the appliance is stopping) or the connection ends."""
        notifier = config.notifier
        try:
            while not notifier.closed:
                revision = await notifier.wait_beyond(self._published)
                while self._published < revision:
                    for topic, body, published in self._changes(config, revision):
                        await client.publish(topic, reply_json(body))
                        self._published = published
        except BusClientError:
            return  # the session ends too; a new one publishes from `_published`

    def _changes(self, config: ConfigService, revision: int) -> list[tuple[str, Any, int]]:
        """The next messages after `_published` (a batch of the log), each with the
        revision it brings `_published` to; when the log no longer reaches back, one
        snapshot message up to `revision`."""
        try:
            changes = config.changes_after(self._published)
        except ConfigError:  # Gone: the log was compacted past it (a snapshot)
            changes = []
        if not changes:
            return [(SNAPSHOT_TOPIC, {"revision": revision, "snapshot": True}, revision)]
        return [
            (config_topic(change.key), self._change_body(config, change), change.revision)
            for change in changes
        ]

    @staticmethod
    def _change_body(config: ConfigService, change: Change) -> dict[str, Any]:
        body = {"key": change.key, "revision": change.revision, "op": change.entry["op"]}
        try:
            version, _ = config.effective(parse_key(change.key))
        except ConfigError:  # not released to this box (or gone)
            return {**body, "version": None, "sha256": None}
        return {**body, "version": version.number, "sha256": version.sha256}


async def _then_cancel(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
    await wait()
    scope.cancel()
