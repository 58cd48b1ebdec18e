"""Live settings from a config key: applied on change, refused whole when bad, removed
cleanly; observed through the rate limiter of the running process."""

from __future__ import annotations

import time

from tests.api.conftest import create_token

OVERLAY_KEY = "fleet/appliance/prod/settings"


def limited(http, requests: int = 12) -> int:
    """How many of `requests` quick reads were refused with 429."""
    return sum(http.get("/api/v1/scheduler").status_code == 429 for _ in range(requests))


def put_overlay(http, content: str, fmt: str = "toml") -> int:
    body = {"format": fmt, "content": content}
    for _ in range(50):  # the overlay may be throttling this token too: wait for a token
        response = http.post(f"/api/v1/config/{OVERLAY_KEY}/versions", json=body)
        if response.status_code != 429:
            break
        time.sleep(0.2)
    assert response.status_code == 201, response.text
    return response.json()["version"]["number"]


def wait_log(process, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{process.log()[-2000:]}"
        time.sleep(0.05)


def test_the_overlay_follows_the_key(start_appliance):
    process = start_appliance(env={"APPLIANCE_CONFIG_SETTINGS_KEY": OVERLAY_KEY})
    viewer = create_token(process, "probe", "viewer")["token"]
    with process.client(process.token) as admin, process.client(viewer) as probe:
        assert limited(probe) == 0  # the default 50/s with a burst of 100

        put_overlay(admin, "[ratelimit]\nrate = 0.5\nburst = 2\n")
        wait_log(process, f"settings overlay {OVERLAY_KEY} v1: ratelimit.burst=2")
        assert limited(probe) >= 9  # two pass, the rest are refused

        # Valid TOML, but not a live setting: refused whole, the first overlay stays.
        put_overlay(admin, '[ratelimit]\nrate = 1000.0\n[http]\nlisten = "0.0.0.0:1"\n')
        wait_log(process, f"settings overlay {OVERLAY_KEY} v2 refused")
        assert limited(probe) == 12

        put_overlay(admin, '{"ratelimit": {"rate": 10000, "burst": 10000}}', fmt="json")
        wait_log(process, f"settings overlay {OVERLAY_KEY} v3: ratelimit.burst=10000")
        assert limited(probe, 40) == 0

        # Released to other boxes only: no overlay here, back to the local settings.
        rules = [{"labels": {"site": "elsewhere"}, "version": 1, "priority": 0}]
        assert (
            admin.put(f"/api/v1/config/{OVERLAY_KEY}/releases", json={"rules": rules}).status_code
            == 200
        )
        wait_log(process, f"settings overlay {OVERLAY_KEY} gone: ratelimit.burst=100")
    assert process.stop() == 0
