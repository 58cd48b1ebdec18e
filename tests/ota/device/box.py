"""A box for the device-side OTA tests: a firmware root, a trust root, the settings, and a
way to play systemd's part (the `ExecStartPre=` boot step, then a start from `current`).

Nothing is faked: the firmware root is real directories and the real `firmware` package,
the appliance a real process (tests/conftest.py `ApplianceProcess`), started the way the
unit starts it: with its working directory `ROOT/current`, so `python -m appliance`
imports the code of the slot `current` points at (the kernel resolves the link at chdir).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from firmware import SlotManager
from ota import SecretKey, TrustRoot
from ota.build import build_bundle, bundle_bytes
from tests.conftest import ApplianceProcess

REPO = Path(__file__).resolve().parents[3]
KEY_A = SecretKey(bytes([1]) * 32, "release-a")
KEY_B = SecretKey(bytes([2]) * 32, "release-b")
OUTSIDER = SecretKey(bytes([9]) * 32, "someone-else")
PRODUCT = "edge-box"
HARDWARE = "board-a"
OLD = "1.0.0"
DAY = 86400
PACKAGES = ("appliance", "ota", "firmware")
FIRMWARE = str(Path(sys.executable).with_name("firmware"))  # the venv's console script


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_digest(directory: Path) -> dict[str, str]:
    """Every file under `directory` (relative path -> sha256), for before/after checks."""
    if not directory.exists():
        return {}
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def appliance_tree(dest: Path, version: str, *, crash: bool = False) -> Path:
    """A copy of the appliance's packages with `__version__` set to `version`; with
    `crash`, one that dies at import (exit status 1 before it does anything)."""
    for name in PACKAGES:
        shutil.copytree(
            REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    init = dest / "appliance" / "__init__.py"
    text = init.read_text()
    assert '__version__ = "' in text
    start = text.index('__version__ = "')
    end = text.index('"', start + len('__version__ = "'))
    text = text[:start] + f'__version__ = "{version}' + text[end:]
    if crash:
        text += '\nraise SystemExit("this version crashes at import")\n'
    init.write_text(text)
    return dest


def make_bundle(files: dict[str, bytes | tuple[bytes, int]], version: str, **options: Any) -> bytes:
    now = int(time.time())
    settings = {
        "product": PRODUCT,
        "version": version,
        "keys": (KEY_A,),
        "hardware": (HARDWARE,),
        "created": now - 60,
        "expires": now + 30 * DAY,
    }
    settings.update(options)
    return bundle_bytes(files, **settings)


def build_tree_bundle(tree: Path, out: Path, version: str) -> Path:
    """A bundle of the directory `tree` at `out`, signed for this test box (a day to live)."""
    now = int(time.time())
    build_bundle(
        tree,
        out,
        product=PRODUCT,
        version=version,
        keys=[KEY_A],
        hardware=[HARDWARE],
        created=now - 60,
        expires=now + DAY,
    )
    return out


class Box:
    """A firmware root with slot `a` installed and good (version `OLD`), a trust root of
    `keys` with `threshold`, and the appliance's settings pointing at both."""

    def __init__(
        self,
        base: Path,
        *,
        keys: tuple[SecretKey, ...] = (KEY_A,),
        threshold: int = 1,
        slot_a: Path | None = None,
        **settings: str,
    ) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.root = base / "slots"
        self.root.mkdir()
        self.data_dir = base / "data"
        self.manager = SlotManager(self.root)
        if slot_a is None:
            (self.root / "a" / "bin").mkdir(parents=True)
            (self.root / "a" / "bin" / "run").write_text("#!/bin/sh\necho 1.0.0\n")
        else:
            shutil.copytree(slot_a, self.root / "a")
        (self.root / "b").mkdir()
        self.manager.mark_complete("a", OLD)
        self.manager.adopt("a", OLD)
        self.trust_root = base / "ota-trust.json"
        root = TrustRoot(tuple(key.public for key in keys), threshold)
        self.trust_root.write_bytes(root.to_json())
        self.port = free_port()
        self.processes: list[ApplianceProcess] = []
        self.settings = {
            "ota_firmware_root": str(self.root),
            "ota_trust_root": str(self.trust_root),
            "ota_product": PRODUCT,
            "ota_hardware": HARDWARE,
            "ota_healthy_s": "0.5",
            "ratelimit_rate": "10000",
            "ratelimit_burst": "10000",
            "tasks_warm_kernels": "false",
            **settings,
        }

    @property
    def env(self) -> dict[str, str]:
        return {f"APPLIANCE_{key.upper()}": value for key, value in self.settings.items()}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        return self.manager.status().to_json()

    def snapshot(self) -> dict[str, Any]:
        """What a refused bundle must leave exactly as it was: both slots' files and the
        boot state (its sequence number included: not even a rewrite)."""
        return {
            "a": tree_digest(self.root / "a"),
            "b": tree_digest(self.root / "b"),
            "markers": sorted(p.name for p in self.root.glob("*.complete")),
            "state": self.status(),
        }

    # --- playing systemd ---------------------------------------------------------------

    def boot_step(self) -> str:
        """`ExecStartPre=/opt/appliance/venv/bin/firmware boot`: the venv's console script,
        whose `firmware` is the stable copy outside the slots (here: this checkout's)."""
        result = subprocess.run(
            [FIRMWARE, "boot", "--root", str(self.root)],
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(
        self, *, ready: bool = True, from_slot: bool = True, env: dict[str, str] | None = None
    ) -> ApplianceProcess:
        """`ExecStart=` with `WorkingDirectory=ROOT/current` (or from this checkout); `env`
        adds to the settings' variables (the unit's `Environment=`)."""
        current = self.root / "current"
        process = ApplianceProcess(
            self.data_dir,
            env={**self.env, **(env or {})},
            extra_args=["--http", f"127.0.0.1:{self.port}"],
            preexec_fn=(lambda: os.chdir(current)) if from_slot else None,
        )
        self.processes.append(process)
        return process.wait_ready() if ready else process

    def close(self) -> None:
        """Kill whatever still runs (a failed test) and close every log."""
        for process in self.processes:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()
            process.stop()

    def systemd(self, *, max_starts: int = 10) -> Iterator[tuple[str, ApplianceProcess]]:
        """Start, and start again after every exit, as `Restart=` does: yields (boot step
        output, process) for each start; the caller stops when it has what it waits for."""
        for _ in range(max_starts):
            yield self.boot_step(), self.start(ready=False)
        raise AssertionError(f"no outcome after {max_starts} starts")


def wait_exit(process: ApplianceProcess, timeout: float = 60.0) -> int:
    try:
        return process.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the appliance did not exit:\n{process.log()}") from None


def wait_job(url: str, token: str, job_id: str, states: set[str], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        try:
            response = httpx.get(
                f"{url}/api/v1/ota/jobs/{job_id}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
            )
            if response.status_code == 200:
                job = response.json()
                if job["state"] in states:
                    return job
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {json.dumps(job)}")
