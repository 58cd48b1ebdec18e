"""Building the config replica's service for this box (hub or replica), from settings."""

from __future__ import annotations

from appliance import __version__
from appliance.config import Box, ConfigRepository
from appliance.config.resolve import automatic_labels
from appliance.config.service import ConfigService
from appliance.runtime.health import ComponentHealth
from appliance.settings import Settings
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


async def start_config(config: ConfigService, settings: Settings, rt, nursery) -> None:
    """Start what keeps the config current: nothing on a hub; on a replica, its follower
    (of another appliance, or of etcd), reporting into `config.follower` and `/health`."""
    rt.health.probe("config", lambda: config_health(config))


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
        return ComponentHealth("degraded", f"replica at revision {revision}: upstream offline")
    return ComponentHealth("ok", f"replica at revision {revision} of {follower.upstream_revision}")
