"""`DATA_DIR/run/endpoints.json`: where a running appliance can be reached."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_endpoints(path: Path, endpoints: dict[str, str]) -> None:
    """Replace the file atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(endpoints, indent=2) + "\n")
    os.replace(temporary, path)


def read_endpoints(path: Path) -> dict[str, str]:
    return json.loads(path.read_text())


def http_url(bind: str) -> str:
    """Hypercorn reports `http://127.0.0.1:8080`; `0.0.0.0` is reached on loopback."""
    return bind.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
