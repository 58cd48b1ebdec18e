"""Kernels compile off the event loop at start-up, visibly; a warm restart compiles nothing."""

import time

import httpx


def cache_files(directory):
    return {path: path.stat().st_mtime_ns for path in directory.rglob("*") if path.is_file()}


def test_cold_start_reports_progress_and_warm_restart_compiles_nothing(start_appliance, tmp_path):
    data_dir = tmp_path / "cold"
    # An empty NUMBA_CACHE_DIR: the appliance uses DATA_DIR/cache/numba, empty at first.
    cold = start_appliance(data_dir, ready=False, env={"NUMBA_CACHE_DIR": ""})
    seen_starting = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and seen_starting is None:
        try:
            url = (data_dir / "run" / "endpoints.json").read_text()
            url = url.split('"http": "')[1].split('"')[0]
            response = httpx.get(f"{url}/api/v1/health", timeout=2)
            kernels = response.json()["components"].get("kernels", {})
            if kernels.get("status") == "starting":
                seen_starting = (response.status_code, response.json()["status"], kernels)
        except (OSError, IndexError, httpx.HTTPError):
            pass
        time.sleep(0.02)
    assert seen_starting is not None, cold.log()
    status, overall, kernels = seen_starting
    assert (status, overall) == (503, "starting")
    assert "compiled" in kernels["detail"]
    cold.notify.wait_for("READY", "1", timeout=300)
    statuses = [m["STATUS"] for m in cold.notify.drain() if "STATUS" in m]
    progress = [s for s in statuses if s.startswith("compiling kernels: ")]
    total = progress[-1].split("/")[-1]
    assert progress[-1] == f"compiling kernels: {total}/{total}" and int(total) >= 17
    assert cold.stop() == 0

    cache = data_dir / "cache" / "numba"
    before = cache_files(cache)
    assert any(path.suffix == ".nbi" for path in before)
    warm = start_appliance(data_dir, env={"NUMBA_CACHE_DIR": ""})
    warm.notify.wait_for("READY", "1")
    with warm.client(warm.token) as http:
        health = http.get("/api/v1/health").json()
    assert health["components"]["kernels"]["status"] == "ok"
    assert warm.stop() == 0
    assert cache_files(cache) == before  # loaded from the cache: nothing written
