"""The config as this box serves it: the repository, the notifier, and the box's identity.

A hub accepts writes; a replica refuses them (409 `read_only_replica`) and changes only
through `apply`/`install_snapshot`, called by its follower. Both serve reads the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from appliance.config.changes import Change, ChangeNotifier, change_of
from appliance.config.errors import NotFound, ReadOnly
from appliance.config.keys import ConfigKey
from appliance.config.model import Rule, Version, rules_from_records
from appliance.config.repository import ConfigRepository
from appliance.config.resolve import Box, Resolution, resolve


@dataclass
class FollowerStatus:
    """What a replica's follower reports (updated by the follower, read by status/health)."""

    upstream: str = ""
    kind: str = "appliance"  # or "etcd"
    connected: bool = False
    upstream_revision: int | None = None
    last_sync: float | None = None
    error: dict[str, Any] | None = None  # {"code", "message", "at"} of the last failure
    extra: dict[str, Any] = field(default_factory=dict)


class ConfigService:
    def __init__(self, repository: ConfigRepository, box: Box, *, mode: str) -> None:
        self.repository = repository
        self.box = box
        self.mode = mode
        self.notifier = ChangeNotifier(repository.head()["revision"])
        self.follower: FollowerStatus | None = None

    # Reads.

    def effective(self, key: ConfigKey) -> tuple[Version, Resolution]:
        """The version of `key` this box gets; NotFound when none."""
        resolution = self._resolve(key)
        if resolution.version is None:
            raise NotFound(
                "not_released",
                f"no release rule of {key} matches this box",
                explain=resolution.explain(),
            )
        version = self.repository.version(key, resolution.version)
        if version is None:  # rules only name versions that exist; a store bug otherwise
            raise NotFound("version_not_found", f"{key} has no version {resolution.version}")
        return version, resolution

    def _resolve(self, key: ConfigKey) -> Resolution:
        """Resolution of `key` for this box from one read of its record; NotFound when the
        key does not exist."""
        record = self.repository.key_record(key)
        if record is None:
            raise NotFound("key_not_found", f"no key {key}")
        rules = rules_from_records(record["rules"])
        return resolve(str(key), rules, record["latest"], self.box)

    def explain(self, key: ConfigKey) -> dict[str, Any]:
        resolution = self._resolve(key)
        return {
            "key": str(key),
            "box": {"labels": self.box.labels, "bucket": self.box.bucket(str(key))},
            **resolution.explain(),
        }

    def changes_after(self, revision: int, limit: int = 1000) -> list[Change]:
        """What changed after `revision`: from memory when it reaches back, else from the
        log (Gone when the log was compacted past it)."""
        recent = self.notifier.recent_after(revision)
        if recent is not None:
            return recent[:limit]
        entries, _ = self.repository.log_after(revision, limit)
        return [change_of(entry) for entry in entries]

    # Writes.

    def _writable(self) -> None:
        if self.mode != "hub":
            upstream = self.follower.upstream if self.follower else "its upstream"
            raise ReadOnly(
                "read_only_replica",
                f"this box is a config replica of {upstream}; write there",
            )

    async def add_version(
        self, key: ConfigKey, fmt: str, content: Any, *, author: str, comment: Any = ""
    ) -> tuple[Version, int]:
        self._writable()
        version, entry = await self.repository.add_version(
            key, fmt, content, author=author, comment=comment
        )
        self.notifier.published([entry])
        return version, entry["revision"]

    async def set_rules(self, key: ConfigKey, rules: Any) -> tuple[list[Rule], int]:
        self._writable()
        parsed, entry = await self.repository.set_rules(key, rules)
        self.notifier.published([entry])
        return parsed, entry["revision"]

    async def apply(self, entries: list[dict[str, Any]]) -> int:
        """A replica's follower applies upstream entries (all or none)."""
        revision = await self.repository.apply(entries)
        self.notifier.published(entries)
        return revision

    async def install_snapshot(self, snapshot: Any) -> int:
        revision = await self.repository.install_snapshot(snapshot)
        self.notifier.published([], revision)
        return revision

    def status(self) -> dict[str, Any]:
        head = self.repository.head()
        status: dict[str, Any] = {
            "mode": self.mode,
            "revision": head["revision"],
            "compacted_through": head["compacted_through"],
            "box": {"labels": self.box.labels},
        }
        follower = self.follower
        if follower is not None:
            upstream_revision = follower.upstream_revision
            status.update(
                upstream=follower.upstream,
                upstream_kind=follower.kind,
                connected=follower.connected,
                upstream_revision=upstream_revision,
                lag=None
                if upstream_revision is None
                else max(upstream_revision - head["revision"], 0),
                last_sync=follower.last_sync,
                last_sync_age_s=None
                if follower.last_sync is None
                else round(time.time() - follower.last_sync, 3),
                error=follower.error,
                **follower.extra,
            )
        return status
