"""Helpers for hub and replica tests: real appliance processes on loopback.

A replica's `/health` answers 503 while it is degraded (its upstream down or refusing),
so replicas are started without the shared fixture's wait for a 200 and waited for here
until they serve HTTP at all.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from appliance.store import Store
from tests.conftest import START_TIMEOUT_S, ApplianceProcess

KEY = "acme/pump/prod/limits"
ROOMY = {"APPLIANCE_RATELIMIT_RATE": "100000", "APPLIANCE_RATELIMIT_BURST": "100000"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what or predicate}")


def wait_serving(process: ApplianceProcess) -> ApplianceProcess:
    """Wait until the process answers /health (200, or 503 while degraded)."""
    endpoints = process.data_dir / "run" / "endpoints.json"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise AssertionError(f"appliance exited {process.proc.returncode}:\n{process.log()}")
        if endpoints.exists():
            url = json.loads(endpoints.read_text())["http"]
            try:
                health = httpx.get(f"{url}/api/v1/health", timeout=2)
            except httpx.HTTPError:
                health = None
            if health is not None and health.json().get("status") in ("ok", "degraded"):
                process.url = url
                process.token = (process.data_dir / "admin.token").read_text().strip()
                return process
        time.sleep(0.05)
    raise AssertionError(f"appliance not serving in {START_TIMEOUT_S} s:\n{process.log()}")


def replica_token(hub: ApplianceProcess, name: str = "replica") -> str:
    with hub.client(hub.token) as http:
        response = http.post("/api/v1/auth/tokens", json={"name": name, "role": "replica"})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def put_version(http: httpx.Client, content: str, *, key: str = KEY, fmt: str = "text") -> dict:
    response = http.post(f"/api/v1/config/{key}/versions", json={"format": fmt, "content": content})
    assert response.status_code == 201, response.text
    return response.json()


def put_rules(http: httpx.Client, rules: list[dict], *, key: str = KEY) -> dict:
    response = http.put(f"/api/v1/config/{key}/releases", json={"rules": rules})
    assert response.status_code == 200, response.text
    return response.json()


def status_of(process: ApplianceProcess) -> dict:
    with process.client(process.token) as http:
        response = http.get("/api/v1/config/status")
    assert response.status_code == 200, response.text
    return response.json()


def config_health(process: ApplianceProcess) -> dict:
    return httpx.get(f"{process.url}/api/v1/health", timeout=5).json()["components"]["config"]


@pytest.fixture
async def stores(tmp_path: Path, nursery):
    """`await stores(name)`: a real store under tmp_path, serving writes in the test's
    nursery; all closed at the end."""
    opened: list[Store] = []

    async def open_store(name: str) -> Store:
        store = Store.open(tmp_path / name)
        opened.append(store)
        await nursery.start(store.serve)
        return store

    yield open_store
    nursery.cancel_scope.cancel()
    for store in opened:
        store.close()


@pytest.fixture
def start_hub(start_appliance, tmp_path: Path):
    """A hub on a fixed loopback port (so it can be restarted where its replicas look)."""

    def start(
        data_dir: Path | None = None, *, port: int | None = None, env: dict | None = None
    ) -> ApplianceProcess:
        port = port or free_port()
        hub = start_appliance(
            data_dir or tmp_path / f"hub{port}",
            extra_args=["--http", f"127.0.0.1:{port}"],
            env={**ROOMY, **(env or {})},
        )
        hub.port = port
        return hub

    return start


@pytest.fixture
def start_replica(start_appliance, tmp_path: Path):
    """A replica of `upstream` with `token`, its labels, and more APPLIANCE_* settings."""
    count = [0]

    def start(
        upstream: str,
        token: str,
        *,
        labels: dict | None = None,
        data_dir: Path | None = None,
        env: dict | None = None,
        wait: bool = True,
    ) -> ApplianceProcess:
        count[0] += 1
        settings = {
            **ROOMY,
            "APPLIANCE_CONFIG_MODE": "replica",
            "APPLIANCE_CONFIG_UPSTREAM": upstream,
            "APPLIANCE_CONFIG_UPSTREAM_TOKEN": token,
            "APPLIANCE_DEVICE_LABELS": json.dumps(labels or {"site": "a"}),
            **(env or {}),
        }
        process = start_appliance(
            data_dir or tmp_path / f"replica{count[0]}", ready=False, env=settings
        )
        return wait_serving(process) if wait else process

    return start
