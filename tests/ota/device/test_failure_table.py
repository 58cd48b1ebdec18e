"""The failure table: a failure injected in every state of the install and boot state
machine, each with the state the box must end in (docs/ota.md, "Failure table").

Each row pushes a signed bundle of a newer appliance (NEW) to a box that runs OLD from its
good slot, injects its failure when the install reaches the row's state, plays systemd's
part (`firmware boot` as `ExecStartPre=`, a start from `current`, `Restart=`,
`WatchdogSec=`) until the box has settled, then checks that it runs a complete, committed
slot with the version the row says, that the job and `GET /api/v1/ota/status` tell the
truth, and that the store's data written before (a viewer token, a config key per row) is
intact.

    state       fail  injected                                 ends    job
    ----------  ----  ---------------------------------------  ------  ---------------------------
    receiving   kill  SIGKILL, half the header sent            OLD =   failed interrupted
                io    the connection is reset (RST)            OLD =*  failed interrupted
                hang  sender silent: ota.stall_timeout_s       OLD =*  failed stalled
    verifying   kill  paused there, SIGKILL                    OLD =   failed interrupted
                io    the boot state's read fails (ENOTDIR)    OLD =*  failed ota_unavailable
                hang  paused there; the watchdog kills it      OLD =   failed interrupted
    installing  kill  SIGKILL, the first MiB on disk           OLD     failed interrupted
                io    the slot turns into a file (ENOTDIR)     OLD *   failed install_failed
                hang  sender silent: ota.stall_timeout_s       OLD *   failed stalled
    installed   kill  paused after mark_complete, SIGKILL      OLD     failed interrupted
                io    the marker's write fails (EISDIR)        OLD *   failed install_failed
                hang  paused there; the watchdog kills it      OLD     failed interrupted
    rebooting   kill  paused after mark_pending, SIGKILL       NEW     committed
                io    mark_pending's write fails (EISDIR)      OLD *   failed install_failed
                hang  a request never ends: graceful_timeout   NEW     committed
    boot step   kill  SIGKILL waiting for the state lock       NEW     committed
                io    the try's write fails (EISDIR): exit 1   NEW     committed
                hang  the lock stays held: exit 1 busy, 10 s   NEW     committed
    trial       kill  SIGKILL on trial, in both tries          OLD     rolled_back tries_exhausted
                io    the new marker reads EISDIR; it dies     OLD     rolled_back slot_incomplete
                hang  never healthy: trial_timeout_s, twice    OLD     rolled_back tries_exhausted
    commit      kill  SIGKILL waiting for the state lock       NEW     committed
                io    its state write fails (EISDIR): exit 1   NEW     committed
                hang  the lock stays held: busy 10 s, exit 1   NEW     committed

Beyond the table (`MORE`), where the boot state, the link and the markers could disagree:

    rebooting   io    the link switch fails (EISDIR)           OLD *   failed install_failed
                io    ... and putting the state back fails     NEW     committed
    trial       io    the marker is deleted before the start   OLD     rolled_back slot_incomplete
    commit      io    the marker is deleted; commit refused    OLD     rolled_back slot_incomplete

- OLD: the slot current before is still current, good and committed, with the same files,
  and the version floor has not moved. NEW: the new slot is current, good and committed,
  holds exactly the bundle's files, and the floor is NEW.
- `=`: nothing on the slots changed: both trees, the completion markers and the boot state
  (its sequence number too). `*`: the same process goes on serving; no restart.
- `interrupted` is what the next start settles a job to that a kill or hang left half
  done before the switch; after the switch the job follows the box (`committed`).
- rolled_back: `/ota/status` lists NEW in `denylist` and in `firmware.failed` with the
  job's code as its cause and `"retried": false`, and pushing NEW again is refused
  `denied_version` without a write.
- An I/O error is transient: the test clears it once the box has acted on it.

How: processes are real and really killed (SIGKILL) or stopped (SIGSTOP); a stopped one is
killed by the test playing `WatchdogSec=` (no WATCHDOG=1 for WATCHDOG_S). I/O errors are
real errors of the real code: a directory planted where a durable write creates its temp
file (EISDIR), a directory turned into a file (ENOTDIR), a connection reset by the sender.
The state lock is held as a stuck `firmware` process would hold it. Two states cannot be
reached from outside (the header check, and the step between `mark_complete` and
`mark_pending`): for them the appliance has one test-only pause point
(`appliance.ota.installer`, $APPLIANCE_TEST_OTA_PAUSE_FILE) where it stops itself right
after the job is saved in the named state; the failure is then injected from outside.

The rows share one box, for speed: a row leaves it running and committed, which is where
the next one starts, and pushes a version above anything committed or denied before; after
a row that failed, the next starts on a fresh box.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.ota.installer import PAUSE_FILE_ENV
from firmware.record import decode_state
from ota import HeaderReader
from tests.conftest import ApplianceProcess
from tests.ota.device.box import FIRMWARE, Box, tree_digest
from tests.ota.device.conftest import Trees
from tests.ota.device.faults import (
    BOUND_S,
    Upload,
    held_lock,
    holds_open,
    planted,
    play_watchdog,
    sigkill,
    wait_for,
    wait_stopped,
)

pytestmark = pytest.mark.slow

WATCHDOG_S = 2.0  # the unit's WatchdogSec= (the appliance pings every WATCHDOG_S / 2)
STALL_S = 3.0  # ota.stall_timeout_s: far above a trickle (faults.TRICKLE_S)
FILLER = 3 << 20  # so that an install has a first MiB on disk and files after it
INTO_PAYLOAD = 3 << 19  # where a mid-payload upload pauses: 1.5 MiB into the payload
SETTINGS = {
    "ota_tries": "2",
    "ota_stall_timeout_s": str(STALL_S),
    "http_graceful_timeout_s": "2",
}
ON_TRIAL_UNTIL_KILLED = {"APPLIANCE_OTA_HEALTHY_S": "300"}
NEVER_HEALTHY = {"APPLIANCE_OTA_HEALTHY_S": "300", "APPLIANCE_OTA_TRIAL_TIMEOUT_S": "1"}
CONFIG_KEY = "fleet/app/prod/limits"


class Runner:
    """The shared box and what the rows do to it (playing systemd and the operator)."""

    def __init__(self, base: Path, trees: Trees) -> None:
        self.base = base
        self.trees = trees
        self.pause_file = base / "pause-at"
        self._box: Box | None = None
        self.process: ApplianceProcess | None = None
        self.uploads: list[Upload] = []
        self.admin = ""
        self.viewer = ""
        self.minor = 1  # the next row's version: 1.MINOR.0
        self.boxes = 0
        self.dirty = True  # the box is not where a row may start

    # --- the box ---------------------------------------------------------------------

    def ensure(self) -> None:
        """Before a row: a box running and committed, with data in its store."""
        self.pause_at(None)
        for upload in self.uploads:
            upload.close()
        self.uploads.clear()
        if self.dirty:
            self.close()
            self.boxes += 1
            self._box = Box(self.base / f"box-{self.boxes}", slot_a=self.trees.old, **SETTINGS)
            self.restart()
            assert self.process is not None
            self.admin = self.process.token
            self.viewer = self.write_data()
        self.dirty = True  # until the row ends well

    def close(self) -> None:
        if self._box is not None:
            self._box.close()

    @property
    def box(self) -> Box:
        assert self._box is not None
        return self._box

    @property
    def proc(self) -> subprocess.Popen:
        assert self.process is not None
        return self.process.proc

    @property
    def root(self) -> Path:
        return self.box.root

    @property
    def lock(self) -> Path:
        return self.root / "state" / "lock"

    @property
    def state_temps(self) -> tuple[Path, Path]:
        """Where every boot state write creates its temp file (firmware.durable)."""
        return (self.root / "state" / ".boot.0.tmp", self.root / "state" / ".boot.1.tmp")

    @property
    def env(self) -> dict[str, str]:
        return {"WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)), PAUSE_FILE_ENV: str(self.pause_file)}

    def pause_at(self, state: str | None) -> None:
        self.pause_file.write_text(state or "")

    # --- systemd's part --------------------------------------------------------------

    def boot(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FIRMWARE, "boot", "--root", str(self.root)],
            capture_output=True,
            text=True,
            timeout=BOUND_S,
        )

    def boot_ok(self) -> str:
        result = self.boot()
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, env: dict[str, str] | None = None, *, ready: bool = True) -> None:
        self.process = self.box.start(ready=ready, env={**self.env, **(env or {})})

    def restart(self, env: dict[str, str] | None = None) -> str:
        """`Restart=`: the boot step, then the service from `current`, until ready."""
        output = self.boot_ok()
        self.start(env)
        return output

    def log(self) -> str:
        assert self.process is not None
        return self.process.log()

    def kill(self) -> None:
        sigkill(self.proc)

    def stopped(self) -> None:
        """The process stopped itself at the test-only pause point."""
        wait_stopped(self.proc.pid)

    def cont(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the appliance did not exit:\n{self.log()}") from None

    def watchdog(self) -> None:
        notify = self.process.notify if self.process is not None else None
        assert notify is not None

        def pings() -> int:
            return sum("WATCHDOG" in message for message in notify.drain())

        play_watchdog(self.proc, pings, WATCHDOG_S)

    # --- the API ---------------------------------------------------------------------

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.admin}"}
        return httpx.Client(base_url=self.box.url, headers=headers, timeout=10)

    def ota_status(self) -> dict[str, Any]:
        with self.http() as http:
            response = http.get("/api/v1/ota/status")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_install(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The install under way, once `check(job)` holds."""

        def seen() -> dict[str, Any] | None:
            job = self.ota_status()["install"]
            return job if job is not None and check(job) else None

        return wait_for("the install's job", seen)

    def wait_settled(self) -> dict[str, Any]:
        """No install under way any more: the job is finished."""
        return wait_for("the install to end", lambda: self.ota_status()["install"] is None)

    def wait_committed(self) -> None:
        wait_for(
            "the new version to commit",
            lambda: self.ota_status()["firmware"]["phase"] == "committed",
        )

    def write_data(self) -> str:
        with self.http() as http:
            created = http.post("/api/v1/auth/tokens", json={"name": "kept", "role": "viewer"})
            assert created.status_code == 201, created.text
        self.put_config(CONFIG_KEY, '{"rate": 7}')
        return created.json()["token"]

    def put_config(self, key: str, content: str) -> None:
        with self.http() as http:
            put = http.post(
                f"/api/v1/config/{key}/versions", json={"format": "json", "content": content}
            )
        assert put.status_code == 201, put.text

    def data_intact(self, key: str, content: dict[str, Any]) -> None:
        with self.http(self.viewer) as http:
            me = http.get("/api/v1/auth/me")
            assert me.status_code == 200 and me.json()["name"] == "kept", me.text
            for name, value in ((CONFIG_KEY, {"rate": 7}), (key, content)):
                config = http.get(f"/api/v1/config/{name}")
                assert config.status_code == 200 and config.json() == value, config.text

    # --- bundles ---------------------------------------------------------------------

    @property
    def new(self) -> str:
        return f"1.{self.minor}.0"

    def bundle(self) -> bytes:
        return self.trees.bundle(self.new, filler=FILLER).read_bytes()

    def header_size(self) -> int:
        reader = HeaderReader()
        reader.feed(self.bundle())
        assert reader.header is not None
        return reader.header.size

    def upload(self, *, pause_at: int | None = None, trickle: bool = False) -> Upload:
        upload = Upload(self.box.url, self.admin, self.bundle(), pause_at=pause_at, trickle=trickle)
        self.uploads.append(upload)
        return upload

    def accepted(self) -> Upload:
        """Upload the whole bundle; the box accepted it (202, the switch follows)."""
        upload = self.upload()
        status, body = upload.response()
        assert status == 202, body
        return upload

    def switched(self) -> None:
        """Upload; the box installs, switches and exits 75 for systemd to restart it."""
        self.accepted()
        assert self.wait_exit() == 75, self.log()


# --- the rows' scenarios: inject the failure, play systemd until the box has settled ---


def receiving_kill(r: Runner) -> None:
    cut = r.header_size() // 2
    upload = r.upload(pause_at=cut, trickle=True)
    r.wait_install(
        lambda job: job["state"] == "receiving" and job["progress"]["bytes_received"] >= cut
    )
    r.kill()
    upload.close()
    r.restart()


def receiving_io(r: Runner) -> None:
    cut = r.header_size() // 2
    upload = r.upload(pause_at=cut, trickle=True)
    r.wait_install(lambda job: job["progress"]["bytes_received"] >= cut)
    upload.reset()
    r.wait_settled()


def receiving_hang(r: Runner) -> None:
    upload = r.upload(pause_at=r.header_size() // 2)
    status, body = upload.response()
    assert (status, body["code"], body["job"]["state"]) == (408, "stalled", "failed"), body


def verifying_kill(r: Runner) -> None:
    r.pause_at("verifying")
    upload = r.upload()
    r.stopped()
    r.kill()
    upload.close()
    r.restart()


def verifying_io(r: Runner) -> None:
    r.pause_at("verifying")
    upload = r.upload()
    r.stopped()
    state = r.root / "state"
    aside = r.root / "state.aside"
    state.rename(aside)
    state.write_bytes(b"")  # reading state/boot.N now fails with ENOTDIR
    try:
        r.cont()
        status, body = upload.response()
    finally:
        state.unlink()
        aside.rename(state)
    assert (status, body["code"]) == (503, "ota_unavailable"), body
    assert "Not a directory" in body["detail"], body


def verifying_hang(r: Runner) -> None:
    r.pause_at("verifying")
    upload = r.upload()
    r.stopped()
    r.watchdog()
    upload.close()
    r.restart()


def _mid_payload(r: Runner, *, trickle: bool) -> Upload:
    upload = r.upload(pause_at=r.header_size() + INTO_PAYLOAD, trickle=trickle)
    if trickle:
        r.wait_install(
            lambda job: job["state"] == "installing" and job["progress"]["files_done"] >= 1
        )
    return upload


def installing_kill(r: Runner) -> None:
    upload = _mid_payload(r, trickle=True)
    r.kill()
    upload.close()
    r.restart()


def installing_io(r: Runner) -> None:
    upload = _mid_payload(r, trickle=True)
    slot = r.root / r.ota_status()["install"]["slot"]
    shutil.rmtree(slot)
    slot.write_bytes(b"")  # the writer's next file: ENOTDIR
    upload.resume()
    status, body = upload.response()
    assert (status, body["code"]) == (500, "install_failed"), body
    assert "Not a directory" in body["detail"], body
    assert slot.is_dir() and not any(slot.iterdir())  # emptied again


def installing_hang(r: Runner) -> None:
    upload = _mid_payload(r, trickle=False)
    status, body = upload.response()
    assert (status, body["code"]) == (408, "stalled"), body
    assert body["job"]["progress"]["files_done"] >= 1, body


def installed_kill(r: Runner) -> None:
    r.pause_at("installed")
    r.accepted()
    r.stopped()
    r.kill()
    r.restart()


def installed_io(r: Runner) -> None:
    slot = r.box.manager.inactive_slot()
    with planted(r.root / f".{slot}.complete.tmp"):
        r.accepted()
        r.wait_settled()


def installed_hang(r: Runner) -> None:
    r.pause_at("installed")
    r.accepted()
    r.stopped()
    r.watchdog()
    r.restart()


def rebooting_kill(r: Runner) -> None:
    r.pause_at("rebooting")
    r.accepted()
    r.stopped()
    assert r.box.status()["phase"] == "trial"
    r.kill()
    r.restart()
    r.wait_committed()


def rebooting_io(r: Runner) -> None:
    r.pause_at("installed")
    r.accepted()
    r.stopped()
    with planted(*r.state_temps):
        r.cont()
        r.wait_settled()
    # the install was complete (its marker written), the switch failed: the slot is kept
    # complete and unused (emptying it again needs a state write too, which failed)
    job = r.ota_status()["last_job"]
    (slot,) = [entry for entry in r.box.status()["slots"] if entry["name"] == job["slot"]]
    assert (slot["complete"], slot["version"], slot["roles"]) == (True, r.new, [])


def newest_state_temp(root: Path) -> Path:
    """The temp file of the boot state copy that holds the newest state now: a state write
    goes into the other copy, and the write after it (an undo) into this one."""
    copies = [root / "state" / name for name in ("boot.0", "boot.1")]
    newest = max(copies, key=lambda path: decode_state(path.read_bytes()).seq)
    return newest.with_name(f".{newest.name}.tmp")


def rebooting_link_io(r: Runner) -> None:
    """The switch's state write succeeds, the link switch fails: the firmware puts the
    state back, so the job's failure is what the box does (it stays on OLD)."""
    r.pause_at("installed")
    r.accepted()
    r.stopped()
    with planted(r.root / ".current.tmp"):
        r.cont()
        r.wait_settled()
    job = r.ota_status()["last_job"]
    (slot,) = [entry for entry in r.box.status()["slots"] if entry["name"] == job["slot"]]
    assert (slot["complete"], slot["roles"]) == (False, [])  # emptied again
    # the next start (the boot step) runs OLD, as the job says, and changes nothing
    before = r.box.status()
    assert r.boot_ok().startswith(f"slot {before['current']} "), before
    assert r.box.status() == before


def rebooting_link_undo_io(r: Runner) -> None:
    """The link switch fails and so does putting the state back: the state says NEW on
    trial, so the job follows it (`rebooting`, exit 75) and the next start runs NEW."""
    r.pause_at("installed")
    r.accepted()
    r.stopped()
    with planted(r.root / ".current.tmp", newest_state_temp(r.root)):
        r.cont()
        assert r.wait_exit() == 75, r.log()
        assert "could not be undone" in r.log()
        status = r.box.status()
        assert (status["phase"], status["link"]) == ("trial", status["good"]), status
    r.restart()
    r.wait_committed()


def trial_marker_gone(r: Runner) -> None:
    """The slot on trial loses its completion marker after the boot step counted the try:
    the version finds it so at its start, exits 1, and the next boot step gives it up."""
    r.switched()
    assert "on trial" in r.boot_ok()
    (r.root / f"{r.box.status()['current']}.complete").unlink()
    r.start(ready=False)
    assert r.wait_exit() == 1, r.log()
    assert "is no longer complete" in r.log()
    assert "gave up (slot_incomplete)" in r.boot_ok()
    r.start()


def commit_marker_gone(r: Runner) -> None:
    """The slot on trial loses its completion marker: the commit is refused, the version
    exits 1 and the boot step gives it up."""
    r.switched()
    assert "on trial" in r.boot_ok()
    r.start(ON_TRIAL_UNTIL_KILLED)
    assert r.ota_status()["running"]["trial"] is True
    (r.root / f"{r.box.status()['current']}.complete").unlink()
    with r.http() as http:
        response = http.post("/api/v1/ota/commit")
    assert (response.status_code, response.json()["code"]) == (409, "slot_incomplete"), (
        response.text
    )
    assert r.wait_exit() == 1, r.log()
    assert r.box.status()["phase"] == "trial"
    assert "gave up (slot_incomplete)" in r.boot_ok()
    r.start()


@contextlib.contextmanager
def request_in_flight(r: Runner) -> Iterator[socket.socket]:
    """A client whose request never ends: a config write's head and the first byte of its
    body; the handler waits for the rest, and a graceful stop waits for the handler."""
    body = b'{"format": "json", "content": "{}"}'
    head = (
        f"POST /api/v1/config/fleet/app/prod/slow/versions HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{r.box.port}\r\nAuthorization: Bearer {r.admin}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", r.box.port), timeout=BOUND_S) as sock:
        sock.sendall(head + body[:1])
        yield sock


def rebooting_hang(r: Runner) -> None:
    with request_in_flight(r) as client:
        r.switched()  # exit 75 only once http.graceful_timeout_s gave up on the request
        assert client.recv(1024) == b""  # closed unanswered: the write never happened
    assert "draining in-flight HTTP requests" in r.log()
    r.restart()
    r.wait_committed()


def boot_kill(r: Runner) -> None:
    r.switched()
    before = r.box.status()
    with held_lock(r.lock):
        boot = subprocess.Popen([FIRMWARE, "boot", "--root", str(r.root)])
        wait_for("the boot step waiting for the lock", lambda: holds_open(boot.pid, r.lock))
        assert sigkill(boot) == -signal.SIGKILL
    assert r.box.status() == before  # no try used, nothing written
    r.restart()
    r.wait_committed()


def boot_io(r: Runner) -> None:
    r.switched()
    before = r.box.status()
    with planted(*r.state_temps):
        result = r.boot()
    assert result.returncode == 1 and "io_error" in result.stderr, result
    assert r.box.status() == before  # systemd starts nothing
    r.restart()
    r.wait_committed()


def boot_hang(r: Runner) -> None:
    r.switched()
    before = r.box.status()
    with held_lock(r.lock):
        result = r.boot()  # gives up after its lock timeout (10 s)
    assert result.returncode == 1 and "busy" in result.stderr, result
    assert r.box.status() == before
    r.restart()
    r.wait_committed()


def trial_kill(r: Runner) -> None:
    r.switched()
    for _ in range(2):  # ota.tries
        assert "on trial" in r.boot_ok()
        r.start(ON_TRIAL_UNTIL_KILLED)
        assert r.ota_status()["running"]["trial"] is True
        r.kill()
    assert "gave up (tries_exhausted)" in r.boot_ok()
    r.start()


def trial_io(r: Runner) -> None:
    r.switched()
    assert "on trial" in r.boot_ok()
    r.start(ON_TRIAL_UNTIL_KILLED)
    assert r.ota_status()["running"]["trial"] is True
    marker = r.root / f"{r.box.status()['current']}.complete"
    marker.unlink()
    marker.mkdir()  # reading the new slot's marker now fails with EISDIR
    r.kill()  # the version on trial dies of it; systemd restarts the service
    assert "gave up (slot_incomplete)" in r.boot_ok()
    marker.rmdir()  # the fault clears; the slot stays without a marker
    r.start()


def trial_hang(r: Runner) -> None:
    r.switched()
    for _ in range(2):  # ota.tries
        assert "on trial" in r.boot_ok()
        r.start(NEVER_HEALTHY, ready=False)
        assert r.wait_exit() == 1
        assert "was not healthy for 300 s within 1 s" in r.log()
    assert "gave up (tries_exhausted)" in r.boot_ok()
    r.start()


def commit_kill(r: Runner) -> None:
    r.switched()
    assert "on trial" in r.boot_ok()
    with held_lock(r.lock):
        r.start()
        pid = r.proc.pid
        wait_for("the commit waiting for the lock", lambda: holds_open(pid, r.lock))
        r.kill()
    r.restart()
    r.wait_committed()


def commit_io(r: Runner) -> None:
    r.switched()
    assert "on trial" in r.boot_ok()
    with planted(*r.state_temps):
        r.start(ready=False)
        assert r.wait_exit() == 1, r.log()
    assert "could not commit" in r.log()
    r.restart()
    r.wait_committed()


def commit_hang(r: Runner) -> None:
    r.switched()
    assert "on trial" in r.boot_ok()
    with held_lock(r.lock):
        r.start(ready=False)
        assert r.wait_exit() == 1, r.log()  # after the lock timeout (10 s)
    assert "could not commit" in r.log()
    r.restart()
    r.wait_committed()


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    state: str
    failure: str  # kill | io | hang
    scenario: Callable[[Runner], None]
    ends_on: str  # "old": the slot current before; "new": the new slot, committed
    job: tuple[str, str | None, str]  # the job's final state, code, and words of its detail
    untouched: bool = False  # the slots and the boot state exactly as before
    variant: str = ""  # for a row beyond the table: which other failure of that kind

    @property
    def id(self) -> str:
        return f"{self.state}-{self.failure}" + (f"-{self.variant}" if self.variant else "")


def stopped_while(state: str) -> tuple[str, str, str]:
    return ("failed", "interrupted", f"stopped while the job was {state}")


STALLED = ("failed", "stalled", f"nothing received for {STALL_S:g} s")
NOT_SWITCHED = ("failed", "interrupted", "stopped before it switched to the new slot")
COMMITTED = ("committed", None, "")
GAVE_UP = ("rolled_back", "tries_exhausted", "every start of the version failed before commit")
TABLE = [
    Row("receiving", "kill", receiving_kill, "old", stopped_while("receiving"), untouched=True),
    Row(
        "receiving",
        "io",
        receiving_io,
        "old",
        ("failed", "interrupted", "the upload was interrupted"),
        untouched=True,
    ),
    Row("receiving", "hang", receiving_hang, "old", STALLED, untouched=True),
    Row("verifying", "kill", verifying_kill, "old", stopped_while("verifying"), untouched=True),
    Row(
        "verifying",
        "io",
        verifying_io,
        "old",
        ("failed", "ota_unavailable", "Not a directory"),
        untouched=True,
    ),
    Row("verifying", "hang", verifying_hang, "old", stopped_while("verifying"), untouched=True),
    Row("installing", "kill", installing_kill, "old", stopped_while("installing")),
    Row("installing", "io", installing_io, "old", ("failed", "install_failed", "Not a directory")),
    Row("installing", "hang", installing_hang, "old", STALLED),
    Row("installed", "kill", installed_kill, "old", NOT_SWITCHED),
    Row("installed", "io", installed_io, "old", ("failed", "install_failed", ".complete.tmp")),
    Row("installed", "hang", installed_hang, "old", NOT_SWITCHED),
    Row("rebooting", "kill", rebooting_kill, "new", COMMITTED),
    Row("rebooting", "io", rebooting_io, "old", ("failed", "install_failed", "state/.boot.")),
    Row("rebooting", "hang", rebooting_hang, "new", COMMITTED),
    Row("boot", "kill", boot_kill, "new", COMMITTED),
    Row("boot", "io", boot_io, "new", COMMITTED),
    Row("boot", "hang", boot_hang, "new", COMMITTED),
    Row("trial", "kill", trial_kill, "old", GAVE_UP),
    Row(
        "trial",
        "io",
        trial_io,
        "old",
        ("rolled_back", "slot_incomplete", "is not completely installed"),
    ),
    Row("trial", "hang", trial_hang, "old", GAVE_UP),
    Row("commit", "kill", commit_kill, "new", COMMITTED),
    Row("commit", "io", commit_io, "new", COMMITTED),
    Row("commit", "hang", commit_hang, "new", COMMITTED),
]
# Beyond the table: the other I/O errors of the switch, the trial and the commit, where the boot
# state, the `current` link and the completion markers could disagree.
MORE = [
    Row(
        "rebooting",
        "io",
        rebooting_link_io,
        "old",
        ("failed", "install_failed", ".current.tmp"),
        variant="link",
    ),
    Row("rebooting", "io", rebooting_link_undo_io, "new", COMMITTED, variant="link-undo"),
    Row(
        "trial",
        "io",
        trial_marker_gone,
        "old",
        ("rolled_back", "slot_incomplete", "is not completely installed"),
        variant="marker",
    ),
    Row(
        "commit",
        "io",
        commit_marker_gone,
        "old",
        ("rolled_back", "slot_incomplete", "is not completely installed"),
        variant="marker",
    ),
]


def test_the_table_covers_every_state_with_every_failure():
    states = ["receiving", "verifying", "installing", "installed", "rebooting", "boot"]
    states += ["trial", "commit"]
    assert [(row.state, row.failure) for row in TABLE] == [
        (state, failure) for state in states for failure in ("kill", "io", "hang")
    ]


@pytest.fixture(scope="module")
def runner(tmp_path_factory, trees) -> Iterator[Runner]:
    runner = Runner(tmp_path_factory.mktemp("table"), trees)
    yield runner
    runner.close()


@pytest.mark.parametrize("row", TABLE + MORE, ids=[row.id for row in TABLE + MORE])
def test_failure(runner: Runner, row: Row) -> None:
    runner.ensure()
    r = runner
    before = r.ota_status()
    old, new = before["running"]["version"], r.new
    old_slot = before["firmware"]["current"]
    snapshot = r.box.snapshot()
    key, content = f"fleet/app/prod/row-{row.id}", {"row": row.id}
    r.put_config(key, json.dumps(content))

    row.scenario(r)
    r.pause_at(None)  # the re-push below must not stop at the pause point

    status = r.ota_status()
    firmware = status["firmware"]
    version = new if row.ends_on == "new" else old
    slot = firmware["current"]
    assert status["running"] == {"version": version, "slot": slot, "trial": False}
    health = httpx.get(f"{r.box.url}/api/v1/health", timeout=10).json()
    assert health["version"] == version
    assert (firmware["phase"], firmware["pending"]) == ("committed", None)
    assert firmware["good"] == firmware["link"] == slot
    (current,) = [entry for entry in firmware["slots"] if entry["name"] == slot]
    assert (current["complete"], current["version"]) == (True, version)
    if row.ends_on == "new":
        assert slot != old_slot
        assert tree_digest(r.root / slot) == tree_digest(r.trees.bundles / f"{new}-{FILLER}")
        assert status["floor"] == new
    else:
        assert slot == old_slot
        assert tree_digest(r.root / slot) == snapshot[slot]
        assert status["floor"] == before["floor"]
    if row.untouched:
        assert r.box.snapshot() == snapshot

    assert status["install"] is None
    job = status["last_job"]
    state, code, detail = row.job
    assert (job["state"], job["code"]) == (state, code), job
    assert detail in (job["detail"] or ""), job
    assert job["from_version"] == old
    # the bundle's version is the job's once its header verified: not before
    assert job["version"] == (None if row.state in ("receiving", "verifying") else new), job
    r.data_intact(key, content)

    denied = {entry["version"]: entry for entry in status["denylist"]}
    if job["state"] == "rolled_back":
        assert denied[new] == {**denied[new], "cause": job["code"], "retried": False}
        assert denied[new]["detail"] == job["detail"]
        failed = {entry["version"]: entry for entry in firmware["failed"]}
        assert (failed[new]["cause"], failed[new]["retried"]) == (job["code"], False)
        seq = firmware["seq"]
        status_code, body = r.upload().response()
        assert (status_code, body["code"]) == (422, "denied_version"), body
        assert r.ota_status()["firmware"]["seq"] == seq
    else:
        assert new not in denied

    if row.ends_on == "new" or job["state"] == "rolled_back":
        r.minor += 1  # the version is committed or denied: the next row pushes a higher one
    r.dirty = False
