"""The real process: readiness, watchdog, graceful stop, reload, refusals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from appliance.store import Store


def test_ready_watchdog_and_health(start_appliance):
    appliance = start_appliance(env={"WATCHDOG_USEC": "400000"})
    ready = appliance.notify.wait_for("READY", "1")
    assert "STATUS" in ready
    appliance.notify.wait_for("WATCHDOG", "1")
    before = sum(1 for m in appliance.notify.drain() if m.get("WATCHDOG") == "1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # keeps petting at half of WATCHDOG_USEC
        after = sum(1 for m in appliance.notify.drain() if m.get("WATCHDOG") == "1")
        if after >= before + 3:
            break
        time.sleep(0.05)
    assert after >= before + 3
    health = httpx.get(f"{appliance.url}/api/v1/health").json()
    assert health["status"] == "ok"
    assert health["components"]["store"]["status"] == "ok"
    endpoints = json.loads((appliance.data_dir / "run" / "endpoints.json").read_text())
    assert endpoints["http"] == appliance.url
    token_file = appliance.data_dir / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.read_text().strip() not in appliance.log()
    assert appliance.stop() == 0


def test_watchdog_for_another_pid_is_ignored(start_appliance):
    appliance = start_appliance(env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    appliance.notify.wait_for("READY", "1")
    time.sleep(0.5)
    assert not any("WATCHDOG" in m for m in appliance.notify.drain())
    assert appliance.stop() == 0


def _start_slow_request(url: str, token: str) -> tuple[socket.socket, bytes]:
    """Send the headers of a POST and half its body: the request is in flight."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"name": "made-during-shutdown", "role": "viewer"}).encode()
    conn = socket.create_connection((host, int(port)), timeout=15)
    conn.sendall(
        b"POST /api/v1/auth/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    return conn, body[10:]


def test_sigterm_lets_in_flight_requests_finish(start_appliance):
    appliance = start_appliance()
    appliance.notify.wait_for("READY", "1")
    conn, rest = _start_slow_request(appliance.url, appliance.token)
    time.sleep(0.3)
    appliance.proc.send_signal(signal.SIGTERM)
    appliance.notify.wait_for("STOPPING", "1")
    # New connections are refused once stopping...
    time.sleep(0.3)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{appliance.url}/api/v1/health", timeout=2)
    # ...but the request in flight completes, and its write is durable.
    conn.sendall(rest)
    response = b""
    while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        response += chunk
    conn.close()
    assert response.startswith(b"HTTP/1.1 201"), response[:200]
    assert appliance.proc.wait(30) == 0
    assert appliance.stop() == 0
    store = Store.open(appliance.data_dir / "store", readonly=True)
    try:
        names = [value["name"] for _, value in store.scan("tokens")]
    finally:
        store.close()
    assert "made-during-shutdown" in names


def test_idle_keep_alive_connections_do_not_hold_a_stop(start_appliance):
    """Each client keeps its connection open after a response from the framework's routes
    (JSON, problem, large body); the stop closes them instead of waiting them out."""
    appliance = start_appliance(env={"APPLIANCE_HTTP_GRACEFUL_TIMEOUT_S": "60"})
    clients = [appliance.client(appliance.token) for _ in range(3)]
    assert clients[0].get("/api/v1/scheduler").status_code == 200
    assert clients[1].post("/api/v1/tasks", content=b"{").status_code == 415
    assert clients[2].get("/api/v1/openapi.json").status_code == 200
    began = time.monotonic()
    assert appliance.stop(timeout=90) == 0
    assert time.monotonic() - began < 30  # not the 60 s graceful timeout
    for client in clients:
        client.close()


def test_sigint_also_stops_cleanly(appliance):
    assert appliance.stop(signal.SIGINT) == 0
    assert "stopped" in appliance.log()


def test_second_instance_is_refused_and_first_unaffected(start_appliance, tmp_path):
    first = start_appliance(tmp_path / "shared-data")
    second = start_appliance(tmp_path / "shared-data", ready=False, notify=False)
    assert second.proc.wait(30) == 1
    assert "already running" in second.log()
    assert str(first.proc.pid) in second.log()
    assert httpx.get(f"{first.url}/api/v1/health").status_code == 200
    assert first.stop() == 0


def test_port_in_use_is_a_clear_error(start_appliance):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    process = start_appliance(ready=False, notify=False, extra_args=["--http", f"127.0.0.1:{port}"])
    assert process.proc.wait(30) == 1
    assert "Address already in use" in process.log()
    assert "Traceback" not in process.log()
    taken.close()


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ('[http]\nlisten = "not an address"\n', "http.listen"),
        ("[log]\nlevel = 'shouty'\n", "log.level"),
        ("this is not toml", "--config"),
        ("[nonsense]\nkey = 1\n", "nonsense"),
    ],
)
def test_bad_settings_file_exits_78_naming_the_key(cli, tmp_path, content, key):
    config = tmp_path / "appliance.toml"
    config.write_text(content)
    result = cli("run", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 78
    assert key in result.stderr
    assert not (tmp_path / "d" / "store").exists()


def test_bad_environment_value_exits_78(cli, tmp_path):
    result = cli(
        "run", "--data-dir", str(tmp_path / "d"), env={"APPLIANCE_RATELIMIT_BURST": "lots"}
    )
    assert result.returncode == 78
    assert "ratelimit.burst" in result.stderr


def test_read_only_data_dir_is_a_clear_error(tmp_path):
    data_dir = tmp_path / "ro"
    data_dir.mkdir()
    command = [
        sys.executable,
        "-m",
        "appliance",
        "run",
        "--data-dir",
        str(data_dir),
        "--http",
        "127.0.0.1:0",
        "--bus-tcp",
        "127.0.0.1:0",
    ]
    if os.geteuid() == 0:
        # Root ignores file modes: make the directory a read-only mount in a private
        # mount namespace of the child (util-linux's unshare), which root cannot write.
        command = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount --bind -o ro "{data_dir}" "{data_dir}" && exec "$0" "$@"',
            *command,
        ]
    else:
        data_dir.chmod(0o555)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78, result.stderr
    assert "data.dir" in result.stderr
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr
    assert list(data_dir.iterdir()) == []


def test_sighup_reloads_log_level_and_rate_limits(start_appliance, tmp_path):
    config = tmp_path / "appliance.toml"
    config.write_text("[ratelimit]\nrate = 1000.0\nburst = 1000\n")
    appliance = start_appliance(config=config)
    appliance.notify.wait_for("READY", "1")
    with appliance.client(appliance.token) as http:
        assert all(http.get("/api/v1/auth/me").status_code == 200 for _ in range(5))
        config.write_text(
            '[ratelimit]\nrate = 0.01\nburst = 2\n[log]\nlevel = "debug"\n'
            "[http]\ngraceful_timeout_s = 3\n"
        )
        appliance.proc.send_signal(signal.SIGHUP)
        appliance.notify.wait_for("RELOADING", "1")
        deadline = time.monotonic() + 10
        while "reloaded settings" not in appliance.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        statuses = [http.get("/api/v1/auth/me").status_code for _ in range(4)]
        assert statuses[-1] == 429
        assert "log.level" in appliance.log() and "ratelimit.burst" in appliance.log()
        assert "http.graceful_timeout_s changed; it takes effect at the next restart" in (
            appliance.log()
        )
        # A broken file on reload is refused and the running settings stay.
        config.write_text("[ratelimit]\nrate = -5\n")
        appliance.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reload refused" not in appliance.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "reload refused" in appliance.log()
        assert http.get("/api/v1/health").status_code == 200
    assert appliance.stop() == 0


def test_socket_activation_keeps_the_port(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    data_dir = tmp_path / "activated"
    # bash, not sh: dash cannot redirect from a file descriptor above 9.
    script = (
        f"exec 3<&{listener.fileno()}; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http "
        f"exec {sys.executable} -m appliance run --data-dir {data_dir}"
    )
    for _ in range(2):  # the same port across a restart, held open by the socket's owner
        process = subprocess.Popen(
            ["bash", "-c", script],
            pass_fds=(listener.fileno(),),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        assert response.status_code == 200
        endpoints = json.loads((data_dir / "run" / "endpoints.json").read_text())
        assert endpoints["http"] == f"http://127.0.0.1:{port}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.stderr.read().decode()
        process.stderr.close()
    listener.close()


def test_journald_log_format(tmp_path):
    """Under systemd (JOURNAL_STREAM names our stderr) lines carry <N> and no time."""
    log_path = tmp_path / "journal.log"
    with log_path.open("wb") as log_file:
        stat = os.fstat(log_file.fileno())
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "appliance",
                "run",
                "--data-dir",
                str(tmp_path / "d"),
                "--http",
                "127.0.0.1:0",
                "--bus-tcp",
                "127.0.0.1:0",
            ],
            stdout=log_file,
            stderr=log_file,
            env={**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"},
        )
        deadline = time.monotonic() + 30
        while "ready:" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    lines = [line for line in log_path.read_text().splitlines() if line]
    ours = [line for line in lines if "appliance:" in line]
    assert ours and all(line.startswith("<6>") for line in ours), lines
    assert not any(line[3:7].isdigit() for line in ours)  # no timestamp of our own


def test_full_disk_gives_507_and_loses_nothing(start_appliance, tmp_path):
    """A file size limit (RLIMIT_FSIZE) stands in for a full disk: writes fail cleanly."""
    config = tmp_path / "appliance.toml"
    config.write_text("[ratelimit]\nrate = 100000.0\nburst = 100000\n")
    data_dir = tmp_path / "full"
    first = start_appliance(data_dir, config=config)
    assert first.stop() == 0
    assert not (data_dir / "run" / "endpoints.json").exists()  # removed on a clean stop
    limit = (data_dir / "store" / "data.mdb").stat().st_size + 96 * 1024

    def limit_file_size() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    limited = start_appliance(data_dir, config=config, notify=False, preexec_fn=limit_file_size)
    try:
        url, token = limited.url, limited.token
        created, failures = [], []
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as http:
            for i in range(3000):
                response = http.post(
                    "/api/v1/auth/tokens",
                    json={"name": f"filler-{i}-" + "x" * 40, "role": "viewer"},
                )
                if response.status_code == 201:
                    created.append(response.json()["id"])
                else:
                    failures.append(response)
                    if len(failures) >= 3:
                        break
            assert failures, "the size limit was never reached"
            assert all(r.status_code == 507 for r in failures), [r.text for r in failures]
            assert failures[0].json()["code"] == "storage_full"
            assert http.get("/api/v1/health").status_code == 200
            listed = {t["id"] for t in http.get("/api/v1/auth/tokens").json()["tokens"]}
            assert set(created) <= listed
    finally:
        assert limited.stop() == 0
    store = Store.open(data_dir / "store")  # opens cleanly without the limit
    try:
        stored = {value["id"] for _, value in store.scan("tokens")}
    finally:
        store.close()
    assert set(created) <= stored
