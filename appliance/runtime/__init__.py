"""The process: settings in, root nursery, services started in order, signals, stop.

The package's names are loaded on first use: the command line imports small parts of it
(`endpoints`, `lock`, `errors`) and must not pay for the whole service (web framework,
kernels, OTA) to print its help or send one request.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "AlreadyRunning": "appliance.runtime.lock",
    "StartupError": "appliance.runtime.errors",
    "listen_fds_http": "appliance.runtime.activation",
    "run": "appliance.runtime.main",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
