"""The OTA service of a running appliance: install, switch, commit once healthy, roll back.

It owns the slots (`appliance.ota.slots.Slots`: the firmware slot manager on
`ota.firmware_root`, called from worker threads), the store's OTA records, and the one
install that may run at a time. One object because these share that state: the install
under way is what `status` reports, what commit and rollback must wait for, and what the
switch finishes; the pieces with a single job live in the modules it drives (installer,
staging, policy, jobs, records, slots, trial).

**Install** (`upload`): refused at once, before a byte is read, when another install runs
(`ota_busy`), the slots are not set up (`ota_unavailable`, `not_initialized`), a new
version is on trial (`update_pending`) or the trust root file is missing or invalid
(`no_trust_root`). Then a job is stored and `installer.receive_bundle` reads, verifies and
stages the upload. Any refusal ends the job `failed` with its code, empties the staging
slot again, and leaves the boot state, the running slot and the ledger as they were. When
every file matched, the request is answered (202) and the switch runs in this service's
nursery: `mark_complete` (fsync of the tree, then the completion marker), `mark_pending`
(`current` now points at the new slot, on trial for `ota.tries` starts), the time
high-water mark, then the job is `rebooting` and the appliance is asked to stop and exit
75 (`RESTART_INTO_OTHER_SLOT`) for systemd to start the new slot. A failed `mark_pending`
puts the boot state back (the firmware's all-or-nothing switch), and the job ends `failed`;
after a failure the service reads the boot state again and the job follows what the next
start will do: if the state has the new version on trial anyway (putting it back failed
too), the job goes on to `rebooting`; if the state cannot be read, the process exits 1 and
the next start settles the job.

**Start** (`serve`): the tries are not counted here but by the unit's `ExecStartPre=`
(`firmware boot`), before any code of the new slot runs (docs/ota.md, "Commit or roll
back"). The service only reads the slots: a process that runs from a slot that is no
longer `current` exits 75 at once; the boot state's failed versions join the ledger's
denylist and the good slot's version raises the floor; unfinished jobs are settled
(`jobs.settle`). If this process runs the version on trial, it watches `/health`: once
every component has been ok for `ota.healthy_s` without a break it commits (the floor
becomes the new version); if that has not happened within `ota.trial_timeout_s`, or the
commit itself fails (an I/O error, the state lock held too long), it exits 1, so that
systemd restarts it and the boot step spends another try. A commit refused because the
slot on trial lost its completion marker (`slot_incomplete`, by hand or by the watcher),
or a start from such a slot, exits 1 too: the boot step then gives the slot up.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio

import appliance
from appliance.ota.errors import DeviceCode, OtaRefused, refusal_of
from appliance.ota.installer import JobTracker, UploadStream, receive_bundle
from appliance.ota.jobs import BoxFacts, Job, JobState, new_job, settle
from appliance.ota.policy import DevicePolicy
from appliance.ota.records import DeniedVersion, OtaRecords
from appliance.ota.slots import Slots
from appliance.ota.trial import until_healthy
from appliance.settings.model import OtaSettings
from appliance.store import Store
from appliance.tasks.model import new_task_id as new_time_ordered_id
from firmware import RESTART_INTO_OTHER_SLOT, FirmwareError, Status
from firmware.state import check_version
from ota import ErrorCode, Manifest, OtaError, TrustRoot
from ota.trust import MAX_TRUST_ROOT_BYTES

__all__ = ["OtaService"]

log = logging.getLogger(__name__)
RUNNING_VERSION = appliance.__version__
_CLEANUP_TIMEOUT_S = 30.0


class OtaService:
    def __init__(
        self,
        settings: Callable[[], OtaSettings],
        store: Store,
        health: Any,
        restart: Callable[[int], None],
    ) -> None:
        """`settings()` gives the current `[ota]` settings; `health.snapshot()` is read
        while on trial; `restart(code)` stops the appliance gracefully, exiting `code`."""
        self.settings = settings
        self.records = OtaRecords(store)
        self.health = health
        self.restart = restart
        root = settings().firmware_root
        self.slots = Slots(root) if root is not None else None
        self.current: JobTracker | None = None  # the install under way
        self.trial = False  # this process runs the version on trial
        self._busy = False
        self._nursery: trio.Nursery | None = None

    # --- the service -----------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._on_start()
            task_status.started()
            if self.trial:
                nursery.start_soon(self._watch_trial)
            await trio.sleep_forever()

    async def _on_start(self) -> None:
        if self.slots is None:
            log.info("OTA: no firmware root set; updates are off")
            return
        try:
            status = await self.slots.status()
        except OtaRefused as exc:
            log.warning("OTA unavailable: %s", exc.detail)
            return
        if status.current is None:
            log.info("OTA: no slot installed in %s yet (firmware init)", self.slots.root)
            return
        running = self.slots.running_slot()
        if running is not None and running != status.current:
            log.warning(
                "running from slot %s but slot %s is current: restarting into it",
                running,
                status.current,
            )
            self.restart(RESTART_INTO_OTHER_SLOT)
            return
        pending_version = status.slot(status.pending).version if status.pending else None
        if status.pending is not None and running == status.pending and pending_version is None:
            # Before the jobs are settled: the job follows the box once the boot step gave
            # the slot up (`rolled_back` `slot_incomplete`), not the half-seen trial.
            log.error(
                "slot %s on trial is no longer complete (its completion marker is gone): "
                "exiting 1 so that the boot step gives it up",
                running,
            )
            self.restart(1)
            return
        await self._sync_ledger(status)
        await self._settle_jobs(status)
        self.trial = pending_version is not None and (
            running == status.pending or (running is None and pending_version == RUNNING_VERSION)
        )
        if self.trial:
            log.info(
                "version %s on trial (%d tries left): committing once healthy for %g s",
                pending_version,
                status.tries_left,
                self.settings().healthy_s,
            )

    async def _sync_ledger(self, status: Status) -> None:
        """The boot state's failed versions join the denylist; the good version raises
        the floor. Both are idempotent; the ledger never forgets what the state drops."""
        if status.failed:
            await self.records.deny(
                DeniedVersion(f.version, f.cause, f.detail, f.at) for f in status.failed
            )
        good = status.slot(status.good).version if status.good else None
        if good is not None:
            await self.records.raise_floor(good)

    async def _settle_jobs(self, status: Status) -> None:
        if status.pending is not None and not status.slot(status.pending).complete:
            return  # the next boot step gives the slot on trial up: settle the jobs then
        facts = BoxFacts(
            phase=status.phase,
            current_version=status.current_version,
            pending_version=status.slot(status.pending).version if status.pending else None,
            failed={f.version: (f.cause, f.detail) for f in status.failed},
        )
        for job in self.records.jobs():
            settled = settle(job, facts)
            if settled is not None:
                log.info("OTA job %s: %s -> %s", job.id, job.state, settled.state)
                await self.records.save(settled)

    async def _watch_trial(self) -> None:
        settings = self.settings()
        healthy = await until_healthy(
            self.health.snapshot,
            healthy_s=settings.healthy_s,
            timeout_s=settings.trial_timeout_s,
        )
        if not healthy:
            log.error(
                "version %s was not healthy for %g s within %g s: exiting 1 so that the "
                "boot step spends another try",
                RUNNING_VERSION,
                settings.healthy_s,
                settings.trial_timeout_s,
            )
            self.restart(1)
            return
        try:
            await self.commit()
        except OtaRefused as exc:  # an I/O error, the state lock held too long, ...
            if exc.code == DeviceCode.NO_PENDING:
                return  # committed by hand meanwhile
            if exc.code == DeviceCode.SLOT_INCOMPLETE:
                return  # `commit` asked for the restart already
            log.error(
                "could not commit version %s: %s; exiting 1 so that the boot step spends "
                "another try",
                RUNNING_VERSION,
                exc,
            )
            self.restart(1)

    # --- reading ---------------------------------------------------------------------

    def job(self, job_id: str) -> Job | None:
        if self.current is not None and self.current.job.id == job_id:
            return self.current.job
        return self.records.job(job_id)

    async def status(self) -> dict[str, Any]:
        settings = self.settings()
        document: dict[str, Any] = {
            "running": {
                "version": RUNNING_VERSION,
                "slot": self.slots.running_slot() if self.slots else None,
                "trial": self.trial,
            },
            "product": settings.product,
            "hardware": _hardware(settings),
            "firmware_root": str(settings.firmware_root) if settings.firmware_root else None,
            "available": False,
            "firmware": None,
            **self.records.ledger().to_json(),
            "install": self.current.job.to_json() if self.current is not None else None,
            "last_job": None,
            "settings": {
                "tries": settings.tries,
                "healthy_s": settings.healthy_s,
                "max_bundle_bytes": settings.max_bundle_bytes,
            },
        }
        jobs = self.records.jobs(limit=1)
        if jobs:
            document["last_job"] = jobs[0].to_json()
        if self.slots is not None:
            try:
                document["firmware"] = (await self.slots.status()).to_json()
                document["available"] = True
            except OtaRefused as exc:
                document["unavailable"] = {"code": exc.code, "detail": exc.detail}
        return document

    # --- install ---------------------------------------------------------------------

    async def upload(self, chunks: AsyncIterator[bytes], content_length: int | None) -> Job:
        """Receive, verify and stage one bundle; answer once every file matched (the switch
        goes on in the background). `OtaRefused` for every refusal; `.job` is the failed
        job when one was made."""
        if self._busy:
            raise OtaRefused(409, DeviceCode.OTA_BUSY, "another install is under way")
        self._busy = True
        handed_over = False
        try:
            policy = await self._policy()
            tracker = JobTracker(
                self.records, new_job(new_time_ordered_id(), policy.installed_version)
            )
            await self.records.save(tracker.job)
            self.current = tracker
            job = await self._receive(tracker, policy, chunks, content_length)
            handed_over = True
            return job
        finally:
            if not handed_over:
                self._busy = False
                self.current = None

    async def _receive(
        self,
        tracker: JobTracker,
        policy: DevicePolicy,
        chunks: AsyncIterator[bytes],
        content_length: int | None,
    ) -> Job:
        settings = self.settings()
        slots = self.slots
        assert slots is not None
        staged: list[str] = []  # the slot emptied for this job, once it is

        async def verified(manifest: Manifest, bundle_size: int) -> Path:
            version = str(manifest.version)
            try:
                check_version(version)
            except FirmwareError:
                raise OtaError(
                    ErrorCode.BAD_MANIFEST, f"version {version!r} cannot name a slot"
                ) from None
            slot = await slots.inactive_slot()
            await tracker.move(
                JobState.INSTALLING,
                version=version,
                digest=manifest.digest,
                slot=slot,
                bundle_size=bundle_size,
                files_total=len(manifest.files),
            )
            staged.append(slot)
            return await slots.staging_dir(slot)

        stream = UploadStream(
            chunks,
            limit=settings.max_bundle_bytes,
            stall_timeout=settings.stall_timeout_s,
            on_bytes=lambda count: tracker.progress(bytes_received=count),
        )
        try:
            with trio.fail_after(settings.upload_timeout_s):
                received = await receive_bundle(
                    stream,
                    policy,
                    content_length=content_length,
                    header_read=lambda: tracker.move(JobState.VERIFYING),
                    verified=verified,
                    on_files=lambda done: tracker.progress(files_done=done),
                )
        except BaseException as exc:
            refusal = refusal_of(exc, settings.upload_timeout_s)
            with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT_S):
                await self._fail(tracker, refusal, staged)
            if refusal is None:
                raise
            refusal.job = tracker.job.to_json()
            raise refusal from None
        assert self._nursery is not None
        self._nursery.start_soon(self._switch, tracker, received.manifest)
        return tracker.job

    async def _fail(
        self, tracker: JobTracker, refusal: OtaRefused | None, staged: list[str]
    ) -> None:
        if refusal is None:
            code, detail = DeviceCode.INTERRUPTED, "the upload was interrupted"
        else:
            code, detail = refusal.code, refusal.detail
        if staged and self.slots is not None:
            try:
                await self.slots.staging_dir(staged[0])  # empty it again
            except OtaRefused as exc:
                log.error("could not empty slot %s after a failed install: %s", staged[0], exc)
        try:
            await tracker.move(JobState.FAILED, code=str(code), detail=detail)
        except Exception:
            log.exception("could not record the failure of OTA job %s", tracker.job.id)
        log.warning("OTA job %s failed: %s: %s", tracker.job.id, code, detail)

    async def _switch(self, tracker: JobTracker, manifest: Manifest) -> None:
        """Complete the slot and switch to it, then ask for the restart (module docstring)."""
        assert self.slots is not None
        job = tracker.job
        assert job.slot is not None and job.version is not None
        try:
            await self.slots.mark_complete(job.slot, job.version)
            await tracker.move(JobState.INSTALLED)
            await self.slots.mark_pending(job.slot, job.version, self.settings().tries)
        except Exception as exc:
            refusal = refusal_of(exc, 0.0) or OtaRefused(500, DeviceCode.INSTALL_FAILED, str(exc))
            if refusal.code == DeviceCode.OTA_UNAVAILABLE:  # the slots' I/O error: a failed write
                refusal = OtaRefused(500, DeviceCode.INSTALL_FAILED, refusal.detail)
            installed = tracker.job.state is JobState.INSTALLED
            switched = await self._switched(job) if installed else False
            if switched is None:
                log.error(
                    "OTA job %s: the switch to slot %s failed (%s) and the boot state cannot "
                    "be read; exiting 1: the next start settles the job from the slots",
                    job.id,
                    job.slot,
                    refusal.detail,
                )
                self.restart(1)  # busy until the process exits
                return
            if not switched:
                with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT_S):
                    await self._fail(tracker, refusal, [job.slot])
                self._busy = False
                self.current = None
                return
            log.error(
                "OTA job %s: the switch to slot %s failed (%s) but could not be undone: the "
                "boot state has version %s on trial, so the next start runs it",
                job.id,
                job.slot,
                refusal.detail,
                job.version,
            )
        await self.records.observe_time(manifest.created)
        await tracker.move(JobState.REBOOTING)
        log.info(
            "OTA job %s: version %s installed in slot %s; restarting into it",
            job.id,
            job.version,
            job.slot,
        )
        self.restart(RESTART_INTO_OTHER_SLOT)  # busy until the process exits

    async def _switched(self, job: Job) -> bool | None:
        """After `mark_pending` failed: whether the boot state has the job's version on
        trial anyway (True: the switch stands and the next start runs it), not (False: the
        firmware put the previous state back, or never wrote one), or None when the state
        cannot be read. The stored state is what the next start follows, so the job
        follows it too."""
        assert self.slots is not None
        try:
            status = await self.slots.status()
        except OtaRefused:
            return None
        return status.pending == job.slot and status.current_version == job.version

    async def _policy(self) -> DevicePolicy:
        settings = self.settings()
        status = await self._slots().status()
        if status.current is None:
            raise OtaRefused(
                409, DeviceCode.NOT_INITIALIZED, "no slot is installed yet (firmware init)"
            )
        if status.pending is not None:
            raise OtaRefused(
                409,
                DeviceCode.UPDATE_PENDING,
                f"version {status.current_version} is on trial: commit or roll it back first",
            )
        trust_root = await trio.to_thread.run_sync(_load_trust_root, settings.trust_root)
        ledger = self.records.ledger()
        return DevicePolicy(
            trust_root=trust_root,
            product=settings.product,
            hardware=_hardware(settings),
            installed_version=status.current_version or "",
            floor=ledger.floor,
            denylist=frozenset(ledger.denied) | {f.version for f in status.failed},
            clock=time.time(),
            time_high_water=ledger.time_high_water,
            max_bundle_size=settings.max_bundle_bytes,
        )

    # --- commit and rollback ---------------------------------------------------------

    async def commit(self) -> dict[str, Any]:
        """The version on trial is good: commit it and raise the floor to it."""
        slots = self._slots()
        self._not_installing()
        try:
            state = await slots.commit()
        except OtaRefused as exc:
            if exc.code == DeviceCode.SLOT_INCOMPLETE and self.trial:
                # The slot this process runs from lost its completion marker: it can never
                # be committed. Exit 1: the boot step then gives it up (`slot_incomplete`)
                # and starts the good slot.
                log.error("cannot commit version %s: %s; exiting 1", RUNNING_VERSION, exc)
                self.restart(1)
            raise
        version = state.versions[state.current or ""]
        if version is not None:
            await self.records.raise_floor(version)
        await self._settle_jobs(await slots.status())
        self.trial = False
        log.info("committed version %s in slot %s", version, state.current)
        return await self.status()

    async def rollback(self, reason: str) -> dict[str, Any]:
        """Back to the good (or previous good) slot; the version left is denied. The
        appliance restarts when it no longer runs from the current slot."""
        slots = self._slots()
        self._not_installing()
        failure = await slots.rollback(reason)
        await self.records.deny(
            [DeniedVersion(failure.version, failure.cause, failure.detail, failure.at)]
        )
        status = await slots.status()
        await self._settle_jobs(status)
        restarting = slots.running_slot() != status.current
        log.warning(
            "rolled back from version %s (slot %s) to slot %s%s",
            failure.version,
            failure.slot,
            status.current,
            "; restarting into it" if restarting else "",
        )
        document = await self.status()
        document["rolled_back"] = {
            "version": failure.version,
            "slot": failure.slot,
            "cause": failure.cause,
            "detail": failure.detail,
        }
        document["restarting"] = restarting
        if restarting:
            self.restart(RESTART_INTO_OTHER_SLOT)
        return document

    def _not_installing(self) -> None:
        if self._busy:
            raise OtaRefused(409, DeviceCode.OTA_BUSY, "an install is under way")

    def _slots(self) -> Slots:
        if self.slots is None:
            raise OtaRefused(503, DeviceCode.OTA_UNAVAILABLE, "no firmware root is set")
        return self.slots


def _hardware(settings: OtaSettings) -> str:
    return settings.hardware or platform.machine() or "unknown"


def _load_trust_root(path: Path) -> TrustRoot:
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_TRUST_ROOT_BYTES + 1)
    except OSError as exc:
        raise OtaRefused(
            503, DeviceCode.NO_TRUST_ROOT, f"cannot read the trust root {path}: {exc.strerror}"
        ) from None
    try:
        return TrustRoot.from_json(data)
    except OtaError as exc:
        raise OtaRefused(
            503, DeviceCode.NO_TRUST_ROOT, f"the trust root {path} is not valid: {exc.detail}"
        ) from None
