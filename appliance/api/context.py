"""What the HTTP layer is handed by the runtime: the services it fronts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from appliance.api.metrics import Metrics
from appliance.auth import AuditLog, RateLimiter, SessionStore, TokenStore
from appliance.settings import Settings
from appliance.store import Store

if TYPE_CHECKING:  # the runtime imports the api; at run time this would be a cycle
    from appliance.runtime.health import Health


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
    kernels: dict[str, Any] = field(default_factory=dict)  # name -> appliance.kernels.Kernel
    scheduler: Any = None  # appliance.tasks.Scheduler once the task nursery runs
    stopping: trio.Event = field(default_factory=trio.Event)  # set when the stop begins
    config: Any = None  # appliance.config.service.ConfigService
    bus: Any = None  # appliance.bus.endpoint.BusEndpoint once the endpoint serves
    ota: Any = None  # appliance.ota.OtaService
