"""What `/health` reports: each component's status and the whole process's."""

from __future__ import annotations

import time
from dataclasses import dataclass

STATUSES = ("starting", "ok", "degraded", "down", "stopping")


@dataclass(frozen=True)
class ComponentHealth:
    status: str
    detail: str = ""


class Health:
    def __init__(self, version: str) -> None:
        self.version = version
        self.started_at = time.monotonic()
        self.phase = "starting"  # starting -> ok -> stopping (the process as a whole)
        self._components: dict[str, ComponentHealth] = {}
        self._probes: dict[str, object] = {}

    def set(self, name: str, status: str, detail: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self._components[name] = ComponentHealth(status, detail)

    def probe(self, name: str, check) -> None:
        """Register `check() -> ComponentHealth`, evaluated each time health is read."""
        self._probes[name] = check

    def components(self) -> dict[str, ComponentHealth]:
        current = dict(self._components)
        for name, check in self._probes.items():
            current[name] = check()
        return current

    def snapshot(self) -> dict:
        components = self.components()
        if self.phase != "ok":
            status = self.phase
        elif any(c.status != "ok" for c in components.values()):
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "version": self.version,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "components": {
                name: {"status": c.status, "detail": c.detail}
                for name, c in sorted(components.items())
            },
        }
