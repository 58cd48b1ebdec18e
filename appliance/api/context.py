"""What the HTTP layer is handed by the runtime: the services it fronts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.api.metrics import Metrics
from appliance.auth import AuditLog, RateLimiter, SessionStore, TokenStore
from appliance.runtime.health import Health
from appliance.settings import Settings
from appliance.store import Store


@dataclass(frozen=True)
class ApiContext:
    settings: Callable[[], Settings]  # the current settings; they change on SIGHUP
    store: Store
    tokens: TokenStore
    sessions: SessionStore
    audit: AuditLog
    limiter: RateLimiter
    health: Health
    metrics: Metrics
