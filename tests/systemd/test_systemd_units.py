"""The systemd integration files in systemd/, checked by systemd's own tools.

Only offline tools run here: ``systemd-analyze verify`` and ``security --offline``,
and ``systemd-sysusers``/``systemd-tmpfiles`` against a scratch root. Nothing talks
to a running systemd, and nothing writes to the host's /etc. The tools come from
the Debian package ``systemd``; a missing tool is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "systemd"
SERVICE = UNIT_DIR / "appliance.service"
SOCKET = UNIT_DIR / "appliance.socket"
SYSUSERS = UNIT_DIR / "appliance.sysusers"
TMPFILES = UNIT_DIR / "appliance.tmpfiles"
DOC = REPO / "docs" / "systemd.md"

UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".target", ".mount")
UNIT_FILES = sorted(p for p in UNIT_DIR.iterdir() if p.suffix in UNIT_SUFFIXES)

# Installed location of the console script; verify needs a real executable there.
VENV_BIN = "/opt/appliance/venv/bin/"
EXEC_START = "/opt/appliance/venv/bin/python -m appliance run"
MAX_EXPOSURE = 2.0
HOST_ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")

# Plain, uncoloured, unpaged output whatever the terminal.
TOOL_ENV = {
    **os.environ,
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_LOG_COLOR": "0",
    "LC_ALL": "C.UTF-8",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH: these tests need the Debian package 'systemd' "
            "(apt-get install -y systemd)",
            pytrace=False,
        )
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=TOOL_ENV,
        timeout=120,
        check=False,
    )


def directives(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value, in order (keys such as SystemCallFilter repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(path: Path, section: str, key: str) -> str:
    values = directives(path).get(section, {}).get(key, [])
    assert len(values) == 1, f"{path.name}: [{section}] {key}= set {len(values)} times"
    return values[0]


def security_report(tmp_path: Path) -> str:
    # On the staged copy: newer systemd versions also check ExecStart= offline.
    service = stage_units(tmp_path) / SERVICE.name
    result = run(tool("systemd-analyze"), "security", "--offline=true", "--no-pager", service)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def stage_units(tmp_path: Path) -> Path:
    """Copy every unit to tmp_path/units, pointing venv commands at stub scripts.

    Only the /opt/appliance/venv/bin/ prefix changes; everything else verify sees
    is byte for byte what gets installed. Other commands (/bin/kill) must exist on
    this machine exactly as they must on the box.
    """
    stub_bin = tmp_path / "venv-bin"
    stub_bin.mkdir()
    units = tmp_path / "units"
    units.mkdir()
    for unit in UNIT_FILES:
        text = unit.read_text()
        for name in re.findall(re.escape(VENV_BIN) + r"([\w.-]+)", text):
            stub = stub_bin / name
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        (units / unit.name).write_text(text.replace(VENV_BIN, f"{stub_bin}/"))
    return units


def host_account_state() -> dict[str, tuple[int, int, int] | None]:
    state: dict[str, tuple[int, int, int] | None] = {}
    for name in HOST_ACCOUNT_FILES:
        try:
            st = os.stat(name)
        except FileNotFoundError:
            state[name] = None
        else:
            state[name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return state


def make_accounts(root: Path) -> None:
    """Apply appliance.sysusers to a scratch root (an image with no accounts yet)."""
    (root / "etc").mkdir()
    conf = root / "usr/lib/sysusers.d/appliance.conf"
    conf.parent.mkdir(parents=True)
    shutil.copyfile(SYSUSERS, conf)
    result = run(tool("systemd-sysusers"), f"--root={root}")
    assert result.returncode == 0, result.stderr
    noise = [ln for ln in result.stderr.splitlines() if not ln.startswith("Creating ")]
    assert not noise, result.stderr


def account_line(path: Path, name: str) -> list[str]:
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"{name} not in {path}: {path.read_text()!r}")


# --- systemd-analyze verify ----------------------------------------------------


def test_unit_files_are_found() -> None:
    # The verify test is parametrized over UNIT_FILES: an empty list would pass.
    assert {"appliance.service", "appliance.socket"} <= {p.name for p in UNIT_FILES}


@pytest.mark.parametrize("unit", [p.name for p in UNIT_FILES])
def test_verify_passes_without_warnings(unit: str, tmp_path: Path) -> None:
    units = stage_units(tmp_path)
    result = run(tool("systemd-analyze"), "verify", "--no-pager", units / unit)
    ours = [
        line for line in result.stderr.splitlines() if "appliance" in line or str(tmp_path) in line
    ]
    report = f"systemd-analyze verify {unit} exited {result.returncode}:\n{result.stderr}"
    assert result.returncode == 0, report
    assert not ours, report


def test_verify_notices_a_broken_unit(tmp_path: Path) -> None:
    # Guards the check above: a bad key is only a warning (exit 0), so the test
    # must read stderr, and it must be able to see our unit's name there.
    units = stage_units(tmp_path)
    broken = units / "appliance.service"
    broken.write_text(broken.read_text().replace("[Service]\n", "[Service]\nNoSuchKey=1\n"))
    result = run(tool("systemd-analyze"), "verify", "--no-pager", broken)
    assert "NoSuchKey" in result.stderr
    assert "appliance.service" in result.stderr


# --- systemd-analyze security --------------------------------------------------


def test_overall_exposure_is_at_most_two(tmp_path: Path) -> None:
    report = security_report(tmp_path)
    match = re.search(r"Overall exposure level for appliance\.service: (\d+(?:\.\d+)?)", report)
    assert match, report
    assert float(match.group(1)) <= MAX_EXPOSURE, report


def test_every_remaining_exposure_is_explained_in_the_docs(tmp_path: Path) -> None:
    doc = DOC.read_text().replace("\\|", "|")  # pipes are escaped in table cells
    flagged = [
        line.split()[1] for line in security_report(tmp_path).splitlines() if line.startswith("✗")
    ]
    assert flagged, "systemd-analyze reported no exposures at all; the table is stale"
    missing = [name for name in flagged if f"`{name}`" not in doc]
    assert not missing, f"not in the exposure table of docs/systemd.md: {missing}"


# --- the contract with the Python side -------------------------------------------


def test_service_lifecycle_directives() -> None:
    s = directives(SERVICE)["Service"]
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [EXEC_START]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["TimeoutStopSec"] == ["30s"]
    assert s["Restart"] == ["on-failure"]
    assert s["RestartForceExitStatus"] == ["75"]
    assert s["SuccessExitStatus"] == ["75"]


def test_service_identity_and_directories() -> None:
    s = directives(SERVICE)["Service"]
    assert s["User"] == ["appliance"]
    assert s["Group"] == ["appliance"]
    assert "DynamicUser" not in s, "state must keep its owner across OTA slots"
    assert s["StateDirectory"] == ["appliance"]
    assert s["StateDirectoryMode"] == ["0700"]
    assert s["RuntimeDirectory"] == ["appliance"]
    assert s["ConfigurationDirectory"] == ["appliance"]
    assert s["UMask"] == ["0077"]


def test_service_keeps_what_numba_needs() -> None:
    s = directives(SERVICE)["Service"]
    # llvmlite maps JIT code writable, then executable.
    assert s.get("MemoryDenyWriteExecute", ["no"]) == ["no"]
    # The venv is read-only; compiled kernels go to the cache directory.
    assert s["CacheDirectory"] == ["appliance"]
    assert "NUMBA_CACHE_DIR=%C/appliance/numba" in s["Environment"]


def test_service_network_policy() -> None:
    s = directives(SERVICE)["Service"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert s["IPAddressDeny"] == ["any"]
    assert s["IPAddressAllow"] == ["localhost"]
    assert s["CapabilityBoundingSet"] == [""]
    # setpriority alone comes back: kernel threads lower their own priority (tasks/priority.py).
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources", "setpriority"]


def test_socket_hands_the_service_a_named_http_descriptor() -> None:
    sock = directives(SOCKET)["Socket"]
    assert sock["ListenStream"] == ["127.0.0.1:8080"]
    assert sock["FileDescriptorName"] == ["http"]
    assert sock.get("Accept", ["no"]) == ["no"]
    assert sock.get("Service", ["appliance.service"]) == ["appliance.service"]
    # The listening socket is in the socket unit's cgroup: same rules as the service.
    service = directives(SERVICE)["Service"]
    assert sock["IPAddressDeny"] == service["IPAddressDeny"]
    assert sock["IPAddressAllow"] == service["IPAddressAllow"]


# --- sysusers and tmpfiles ---------------------------------------------------------


def test_sysusers_creates_a_system_user_and_group(tmp_path: Path) -> None:
    before = host_account_state()
    make_accounts(tmp_path)
    assert host_account_state() == before, "systemd-sysusers touched the host's /etc"

    user = account_line(tmp_path / "etc/passwd", "appliance")
    group = account_line(tmp_path / "etc/group", "appliance")
    uid, gid = int(user[2]), int(user[3])
    assert 0 < uid < 1000, "a system uid"
    assert gid == int(group[2])
    assert user[5] == "/var/lib/appliance"
    assert user[6].endswith("nologin")
    assert one(SERVICE, "Service", "User") == user[0]
    assert one(SERVICE, "Service", "Group") == group[0]


def test_tmpfiles_creates_the_config_directory(tmp_path: Path) -> None:
    host_config_dir_existed = os.path.lexists("/etc/appliance")
    make_accounts(tmp_path)
    conf = tmp_path / "usr/lib/tmpfiles.d/appliance.conf"
    conf.parent.mkdir(parents=True)
    shutil.copyfile(TMPFILES, conf)

    result = run(tool("systemd-tmpfiles"), f"--root={tmp_path}", "--create")
    if os.geteuid() == 0:
        assert result.returncode == 0, result.stderr
        assert not result.stderr, result.stderr
    else:
        # Without root the ownership cannot be applied; the file still parsed and
        # everything else was done. Any other complaint is a real failure.
        complaints = [
            ln for ln in result.stderr.splitlines() if "Operation not permitted" not in ln
        ]
        assert not complaints, result.stderr

    config_dir = tmp_path / "etc/appliance"
    st = config_dir.stat()
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert f"{stat.S_IMODE(st.st_mode):04o}" == one(
        SERVICE, "Service", "ConfigurationDirectoryMode"
    )
    if os.geteuid() == 0:
        gid = int(account_line(tmp_path / "etc/group", "appliance")[2])
        assert (st.st_uid, st.st_gid) == (0, gid)
    assert os.path.lexists("/etc/appliance") == host_config_dir_existed
