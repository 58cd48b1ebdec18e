"""`appliance run`: the root nursery, ordered start, signals, graceful stop.

The tree (see docs/architecture.md):

    root nursery
    ├── store writer            (group commit; started first, stopped last)
    ├── ota service             (settles install jobs; on trial: commits once healthy)
    ├── config follower         (replica only: follows its hub's feed, or etcd)
    ├── settings overlay        (only with config.settings_key: live settings from a key)
    ├── bus endpoint            (Unix socket and TCP; closes its connections on stop)
    ├── task scheduler          (recovery, then one worker per CPU slot, result cleanup)
    ├── bus services            (svc.config, svc.tasks, svc.health; config.changed.*)
    ├── watchdog                (WATCHDOG=1 while the loop and the store are healthy)
    ├── signal handler          (SIGTERM/SIGINT: stop; SIGHUP: reload)
    ├── kernel warm-up          (compiles or loads every kernel in a worker thread)
    └── http server (hypercorn) (serves /health at once; READY=1 once kernels are loaded)

Each service is started with `nursery.start`, so the next one starts only when the last is
really ready. A service that fails takes the nursery down: the error is logged with its
traceback and the process exits 1, for systemd to restart it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import ssl
from dataclasses import dataclass, field, replace

import trio

from appliance import __version__
from appliance.api import ApiContext, Metrics, create_app, serve_http
from appliance.api.bus_metrics import BusCollector
from appliance.auth import AuditLog, RateLimiter, SessionStore, TokenStore
from appliance.bus import NodeRecord, token_authenticator
from appliance.bus.endpoint import BusEndpoint
from appliance.bus.messages import Host
from appliance.bus.peer import Limits
from appliance.bus.services import BusServices
from appliance.config import ConfigError, ConfigKey, parse_key
from appliance.config.service import ConfigService
from appliance.ota import OtaService
from appliance.runtime.compute import build_scheduler, load_kernel_library, warm_kernels
from appliance.runtime.configure import build_config, start_config
from appliance.runtime.endpoints import http_url, write_endpoints
from appliance.runtime.errors import StartupError
from appliance.runtime.health import ComponentHealth, Health
from appliance.runtime.lock import InstanceLock
from appliance.runtime.logs import set_level
from appliance.runtime.sdnotify import Notifier, watchdog_interval_s
from appliance.settings import Settings, SettingsError, SettingsSources, live_changes
from appliance.settings import load_settings as load
from appliance.settings.overlay import parse_overlay, with_overlay
from appliance.store import Store

log = logging.getLogger("appliance")
MiB = 1 << 20


@dataclass
class Runtime:
    """The state `appliance run` owns for its lifetime (not handed to services)."""

    settings: Settings
    sources: SettingsSources
    notifier: Notifier
    health: Health = field(default_factory=lambda: Health(__version__))
    stop_requested: trio.Event = field(default_factory=trio.Event)
    limiter: RateLimiter | None = None
    # The live settings come from `sources` (re-read on SIGHUP) with the fleet config's
    # overlay on top (appliance/settings/overlay.py); `overlay` is the one in force.
    overlay: dict[str, object] = field(default_factory=dict)
    local: Settings | None = None  # the settings from `sources` alone, before the overlay
    exit_code: int = 0  # 75 after an OTA switch: systemd restarts into the other slot


def run(settings: Settings, sources: SettingsSources) -> int:
    """Run the service until it is told to stop; return the process exit code.

    Errors with a clear cause (bad settings, a port in use, a second instance, an unusable
    store) are raised unwrapped for the CLI to report in one line; anything else is raised
    as it came, for the CLI to log with its traceback."""
    data_dir = settings.data_dir
    lock = InstanceLock(data_dir / "run" / "appliance.lock")
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # tokens and state: ours only
        lock.acquire()  # AlreadyRunning propagates to the CLI
    except OSError as exc:
        raise SettingsError("data.dir", f"cannot use {data_dir}: {exc.strerror}") from None
    try:
        runtime = Runtime(settings, sources, Notifier(), local=settings)
        trio.run(_main, runtime)
        return runtime.exit_code
    except BaseExceptionGroup as group:
        raise _sole_cause(group) from None
    finally:
        lock.release()


def _sole_cause(group: BaseExceptionGroup) -> BaseException:
    """The one leaf of a nursery's exception group when there is exactly one."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group


async def _main(rt: Runtime) -> None:
    settings = rt.settings
    _check_tls(settings)
    rt.notifier.notify(STATUS="opening the store")
    store = Store.open(
        settings.data_dir / "store",
        map_size=settings.store.map_size_mb * MiB,
        max_map_size=settings.store.max_map_size_mb * MiB,
    )
    try:
        async with trio.open_nursery() as nursery:
            await _start_services(rt, store, nursery)
    finally:
        store.close()
        rt.notifier.close()
    log.info("stopped")


async def _start_services(rt: Runtime, store: Store, nursery: trio.Nursery) -> None:
    settings = rt.settings
    await nursery.start(store.serve)
    rt.health.probe("store", lambda: _store_health(store))
    ota = OtaService(lambda: rt.settings.ota, store, rt.health, lambda code: _restart(rt, code))
    await nursery.start(ota.serve)
    if rt.stop_requested.is_set():  # running from a slot that is no longer current
        nursery.cancel_scope.cancel()
        return

    tokens = TokenStore(store)
    token_file = settings.data_dir / "admin.token"
    if tokens.bootstrap_admin(token_file):
        log.info("first start: the admin token was written to %s", token_file)

    rt.limiter = RateLimiter(settings.ratelimit.rate, settings.ratelimit.burst)
    metrics = Metrics()
    metrics.gauges(lambda: _store_gauges(store))

    config = build_config(settings, store)
    # A replica's follower starts here (appliance/config/replica.py, etcd.py).
    await start_config(config, settings, rt, nursery)
    if settings.config.settings_key:
        overlay_key = parse_key(settings.config.settings_key)
        await nursery.start(_follow_settings_overlay, rt, config, overlay_key)

    rt.notifier.notify(STATUS="starting the bus")
    bus = BusEndpoint(
        authenticate=token_authenticator(tokens),
        node=_bus_node(settings),
        unix_path=settings.bus_unix_path,
        tcp=(settings.bus.tcp.host, settings.bus.tcp.port),
        max_frame=settings.bus.max_frame,
        max_bad_crc=settings.bus.max_bad_crc,
        limits=Limits(
            ping_timeout=settings.bus.ping_timeout_s,
            stream_keep=settings.bus.stream_keep_s,
            stream_buffer=settings.bus.stream_buffer,
        ),
        links=settings.bus.links,
        link_token=settings.bus.link_token or None,
    )
    try:
        bus_addresses = await nursery.start(bus.serve)
    except BaseExceptionGroup as group:  # the Unix socket could not be bound
        cause = _sole_cause(group)
        if not isinstance(cause, OSError):
            raise
        reason = cause.strerror or str(cause)
        raise StartupError(f"cannot listen for the bus on {bus.unix_path}: {reason}") from None
    rt.health.probe("bus", lambda: ComponentHealth(*bus.health()))
    metrics.registry.register(BusCollector(bus.stats))

    rt.notifier.notify(STATUS="loading kernels")
    kernels = load_kernel_library(settings)
    kernels_ready = trio.Event()
    scheduler = build_scheduler(settings, store, kernels, metrics, kernels_ready)
    await nursery.start(scheduler.serve)
    bus_services = BusServices(
        bus,
        health=rt.health,
        config=config,
        scheduler=scheduler,
        kernels=kernels,
        default_timeout_s=settings.tasks.default_timeout_s,
        max_input_samples=settings.tasks.max_input_samples,
        max_frame=settings.bus.max_frame,
    )
    await nursery.start(bus_services.serve)
    ctx = ApiContext(
        settings=lambda: rt.settings,
        store=store,
        tokens=tokens,
        sessions=SessionStore(store, tokens, settings.http.session_ttl_s),
        audit=AuditLog(store),
        limiter=rt.limiter,
        health=rt.health,
        metrics=metrics,
        kernels=kernels,
        scheduler=scheduler,
        stopping=rt.stop_requested,
        config=config,
        bus=bus,
        ota=ota,
    )

    interval = watchdog_interval_s(os.environ, os.getpid())
    if interval is not None and settings.systemd.watchdog:
        await nursery.start(_watchdog, rt, store, interval)
    await nursery.start(_handle_signals, rt)
    if settings.tasks.warm_kernels:
        await nursery.start(warm_kernels, kernels, rt.health, rt.notifier, kernels_ready)
    else:
        kernels_ready.set()  # each kernel compiles on its first run instead

    rt.notifier.notify(STATUS="starting the HTTP server")
    http_done = trio.Event()
    try:
        binds = await nursery.start(_run_http, create_app(ctx), rt, http_done)
    except BaseExceptionGroup as group:  # it failed before it listened: say why in one line
        cause = _sole_cause(group)
        if not isinstance(cause, OSError):
            raise
        reason = cause.strerror or str(cause)
        raise StartupError(f"cannot listen for HTTP on {settings.http.listen}: {reason}") from None
    rt.health.set("http", "ok", ", ".join(binds))

    endpoints = {"http": http_url(binds[0])}
    if bus_addresses.unix is not None:
        endpoints["bus_unix"] = bus_addresses.unix
    if bus_addresses.tcp is not None:
        endpoints["bus_tcp"] = bus_addresses.tcp
    write_endpoints(settings.data_dir / "run" / "endpoints.json", endpoints)
    await _first_of(kernels_ready, rt.stop_requested)  # READY=1 once every kernel is loaded
    if not rt.stop_requested.is_set():
        rt.health.phase = "ok"
        log.info("ready: http %s, data in %s", endpoints["http"], settings.data_dir)
        rt.notifier.notify(READY=1, STATUS=f"serving HTTP on {endpoints['http']}")

    await rt.stop_requested.wait()
    rt.health.phase = "stopping"
    rt.notifier.notify(STOPPING=1, STATUS="stopping: closing bus connections, draining HTTP")
    with trio.move_on_after(bus.limits.close_grace + 1.0):
        await bus_services.stop()  # its own connection first, as a client says goodbye
        await bus.stop()  # going_away to every connection; HTTP drains meanwhile
    log.info(
        "stopping: draining in-flight HTTP requests (up to %.0f s)",
        settings.http.graceful_timeout_s,
    )
    await http_done.wait()
    (settings.data_dir / "run" / "endpoints.json").unlink(missing_ok=True)
    nursery.cancel_scope.cancel()  # the writer finishes the batch it has, then stops


async def _run_http(
    app,
    rt: Runtime,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await serve_http(app, rt.settings, rt.stop_requested, task_status=task_status)
    finally:
        done.set()
    if not rt.stop_requested.is_set():
        raise RuntimeError("the HTTP server stopped on its own")


def _restart(rt: Runtime, exit_code: int) -> None:
    """Stop gracefully and exit `exit_code` (75: into the other slot; 1: a failed start)."""
    log.info("stopping to restart (exit %d)", exit_code)
    rt.exit_code = exit_code
    rt.stop_requested.set()


async def _handle_signals(
    rt: Runtime, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                _reload(rt)
            else:
                log.info("received %s", signal.Signals(signum).name)
                rt.stop_requested.set()


async def _first_of(*events: trio.Event) -> None:
    async def wait(event: trio.Event) -> None:
        await event.wait()
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for event in events:
            nursery.start_soon(wait, event)


def _reload(rt: Runtime) -> None:
    rt.notifier.notify(RELOADING=1, STATUS="reloading settings")
    try:
        new = load(rt.sources)
    except SettingsError as exc:
        log.error("reload refused, keeping the running settings: %s", exc)
    else:
        rt.local = new
        _apply_settings(rt, with_overlay(new, rt.overlay), "reloaded settings", restart_ok=True)
    rt.notifier.notify(READY=1, STATUS="serving")


def _apply_settings(rt: Runtime, new: Settings, what: str, *, restart_ok: bool = False) -> None:
    """Apply the live keys of `new`; warn about the others (they wait for a restart)."""
    live, restart = live_changes(rt.settings, new)
    if "log.level" in live:
        set_level(live["log.level"])
    if rt.limiter is not None:
        rt.limiter.configure(new.ratelimit.rate, new.ratelimit.burst)
    if restart_ok:
        for key in restart:
            log.warning("%s changed; it takes effect at the next restart", key)
    rt.settings = _merge_live(rt.settings, new)
    changes = ", ".join(f"{key}={value}" for key, value in sorted(live.items()))
    log.info("%s: %s", what, changes or "nothing live changed")


async def _follow_settings_overlay(
    rt: Runtime,
    config: ConfigService,
    key: ConfigKey,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep the live settings in step with the config key `config.settings_key`."""
    applied: str | None = None  # sha256 of the overlay content in force (None: none)
    revision = config.notifier.revision
    task_status.started()
    while True:
        try:
            version, _ = config.effective(key)
        except ConfigError:  # no such key, or not released to this box: no overlay
            version = None
        sha = None if version is None else version.sha256
        if sha != applied:
            applied = sha
            try:
                overlay = {} if version is None else parse_overlay(version.format, version.content)
            except SettingsError as exc:
                log.error(
                    "settings overlay %s v%s refused, keeping the one in force: %s",
                    key,
                    version.number,
                    exc,
                )
            else:
                rt.overlay = overlay
                where = f"settings overlay {key} " + (f"v{version.number}" if version else "gone")
                _apply_settings(rt, with_overlay(rt.local or rt.settings, overlay), where)
        if config.notifier.closed:
            return  # the stop has begun: nothing more to follow
        revision = await config.notifier.wait_beyond(revision)


def _merge_live(old: Settings, new: Settings) -> Settings:
    """Keep the running values of settings that need a restart; take the live ones."""
    return replace(old, log=new.log, ratelimit=new.ratelimit)


async def _watchdog(
    rt: Runtime,
    store: Store,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Pet the watchdog only while the loop runs (we got here) and the store answers."""
    task_status.started()
    while True:
        if store.healthy():
            rt.notifier.notify(WATCHDOG=1)
        else:
            log.error("store unhealthy: withholding WATCHDOG=1 so systemd restarts us")
        await trio.sleep(interval)


def _bus_node(settings: Settings) -> NodeRecord:
    """The endpoint's node record: the device name (or hostname) made a valid node name."""
    hostname = socket.gethostname() or "localhost"
    raw = settings.device.name or hostname
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", raw)[:253].strip("-_.") or "appliance"
    host = re.sub(r"[^\x21-\x7e]", "-", hostname)[:253]
    return NodeRecord(name=name, version=__version__, host=Host(hostname=host, pid=os.getpid()))


def _store_health(store: Store) -> ComponentHealth:
    if not store.healthy():
        return ComponentHealth("down", "the store does not answer or a commit is stuck")
    stats = store.stats()
    used = stats["used_bytes"] / stats["map_size"]
    return ComponentHealth("ok", f"{stats['used_bytes'] // MiB} MiB used, {used:.0%} of map")


def _store_gauges(store: Store) -> dict[str, tuple[str, float]]:
    stats = store.stats()
    return {
        "appliance_store_map_bytes": ("LMDB map size", stats["map_size"]),
        "appliance_store_used_bytes": ("LMDB pages in use", stats["used_bytes"]),
        "appliance_store_commits": ("Group commits since start", stats["commits"]),
        "appliance_store_writes": ("Writes acknowledged since start", stats["writes"]),
    }


def _check_tls(settings: Settings) -> None:
    """Load the certificate once before starting, so a bad one is a settings error (78)."""
    cert, key = settings.http.tls_cert, settings.http.tls_key
    if key is not None and cert is None:
        raise SettingsError("http.tls_key", "set http.tls_cert as well")
    if cert is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError("http.tls_cert", f"cannot load {cert}: {exc}") from None
