"""Building the config replica's service for this box (hub or replica), from settings."""

from __future__ import annotations

import httpx
import trio

from appliance import __version__
from appliance.config import Box, ConfigRepository
from appliance.config.replica import Upstream, follow_appliance
from appliance.config.resolve import automatic_labels
from appliance.config.service import ConfigService
from appliance.runtime.health import ComponentHealth
from appliance.settings import Settings, SettingsError
from appliance.settings.model import ConfigSettings
from appliance.store import Store
from appliance.store.migrations import STORE_ID_KEY


def box_of(settings: Settings, store: Store) -> Box:
    """This box: its store's id (random, made at the store's creation) and its labels,
    the automatic ones (hostname, arch, version) overridden by `device.labels`."""
    labels = {**automatic_labels(__version__), **settings.device.labels}
    if settings.device.name:
        labels.setdefault("name", settings.device.name)
    return Box(device_id=store.get("meta", STORE_ID_KEY), labels=labels)


def build_config(settings: Settings, store: Store) -> ConfigService:
    config = settings.config
    repository = ConfigRepository(
        store, max_content_bytes=config.max_content_bytes, log_retention=config.log_retention
    )
    return ConfigService(repository, box_of(settings, store), mode=config.mode)


async def start_config(
    config: ConfigService, settings: Settings, rt, nursery: trio.Nursery
) -> None:
    """Start what keeps the config current: nothing on a hub; on a replica, its follower
    (of another appliance, or of etcd), reporting into `config.follower` and `/health`.

    A follower is `async def follow(config, settings.config, *, task_status)`, started in
    the root nursery; it is ready at once (the store serves reads meanwhile) and runs
    until the nursery is cancelled."""
    rt.health.probe("config", lambda: config_health(config))
    nursery.start_soon(_close_at_stop, config, rt.stop_requested)
    if config.mode != "replica":
        return
    kind = settings.config.upstream_kind
    if kind == "etcd":
        from appliance.config.etcd import follow_etcd  # its own helper owns that module

        await nursery.start(follow_etcd, config, settings.config)
    else:
        await nursery.start(follow_appliance, config, upstream_of(settings.config))


async def _close_at_stop(config: ConfigService, stopping: trio.Event) -> None:
    """When the stop begins, wake every config watcher for good so SSE streams end."""
    await stopping.wait()
    config.notifier.close()


def upstream_of(config: ConfigSettings) -> Upstream:
    """The appliance a replica follows, from `[config]`; a SettingsError when it lacks one."""
    url = config.upstream.strip()
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise SettingsError(
            "config.upstream", f"a replica needs its upstream's http(s) URL, not {url!r}"
        )
    if not config.upstream_token:
        raise SettingsError(
            "config.upstream_token", "a replica needs a token of its upstream's replica role"
        )
    return Upstream(
        url=url.rstrip("/"),
        token=config.upstream_token,
        poll_wait_s=config.poll_wait_s,
        max_content_bytes=config.max_content_bytes,
    )


def config_health(config: ConfigService) -> ComponentHealth:
    """ok on a hub; on a replica ok while it follows its upstream, degraded (never down:
    it still serves what it has) while the upstream is unreachable or refused."""
    revision = config.notifier.revision
    follower = config.follower
    if follower is None:
        return ComponentHealth("ok", f"{config.mode} at revision {revision}")
    if follower.error is not None:
        return ComponentHealth(
            "degraded", f"replica at revision {revision}: {follower.error['message']}"
        )
    if not follower.connected:
        return ComponentHealth(
            "degraded", f"replica at revision {revision}: connecting to {follower.upstream}"
        )
    return ComponentHealth("ok", f"replica at revision {revision} of {follower.upstream_revision}")
