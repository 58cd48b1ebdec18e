"""What the OTA part keeps in the store, outside the slots: jobs and the anti-rollback ledger.

Both live in the store's `kv` database under keys starting with `"ota"`:

    ("ota", "job", ID)   one install job (`appliance.ota.jobs.Job.to_record()`); the newest
                         `MAX_JOBS` are kept, older ones are dropped as new ones are made
    ("ota", "ledger")    the `Ledger`: version floor, denylist, time high-water mark

The ledger is what a slot switch or a rollback must never reset, so it is not in the slots
(`firmware` keeps its own, capped, list of failed versions in the boot state, which the
ledger absorbs at every start): the **floor** (the highest version ever committed on this
box; a bundle must be above it), the **denylist** (versions that failed here, never
installed again) and the **time high-water mark** (the latest signed `created` time of a
bundle this box installed: expiry is judged against the later of it and the clock).

Every write goes through the store's group commit and returns once it is durable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.ota.jobs import Job
from appliance.store import Store, WriteTxn, pack_key
from ota import Version

__all__ = ["MAX_JOBS", "DeniedVersion", "Ledger", "OtaRecords"]

MAX_JOBS = 100
_DB = "kv"
_JOB_PREFIX = pack_key("ota", "job")
_LEDGER_KEY = pack_key("ota", "ledger")


@dataclass(frozen=True)
class DeniedVersion:
    version: str
    cause: str
    detail: str
    at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cause": self.cause,
            "detail": self.detail,
            "at": self.at,
            "retried": False,
        }


@dataclass(frozen=True)
class Ledger:
    floor: str | None = None
    denied: dict[str, DeniedVersion] = field(default_factory=dict)
    time_high_water: int = 0

    def to_record(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "denied": [[d.version, d.cause, d.detail, d.at] for d in self.denied.values()],
            "time_high_water": self.time_high_water,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> Ledger:
        if record is None:
            return cls()
        denied = {row[0]: DeniedVersion(*row) for row in record["denied"]}
        return cls(record["floor"], denied, record["time_high_water"])

    def to_json(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "denylist": [d.to_json() for d in self.denied.values()],
            "time_high_water": self.time_high_water,
        }


def _higher(a: str | None, b: str | None) -> str | None:
    """The greater of two versions by semver precedence (one that is not semver loses)."""
    best: tuple[Version, str] | None = None
    for text in (a, b):
        if not text:
            continue
        try:
            version = Version.parse(text)
        except ValueError:
            continue
        if best is None or version > best[0]:
            best = (version, text)
    return None if best is None else best[1]


class OtaRecords:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- jobs ------------------------------------------------------------------------

    def job(self, job_id: str) -> Job | None:
        try:
            key = pack_key("ota", "job", job_id)
        except ValueError:  # a NUL or an overlong id: no such job
            return None
        record = self.store.get(_DB, key)
        return None if record is None else Job.from_record(record)

    def jobs(self, limit: int = MAX_JOBS) -> list[Job]:
        """The newest jobs first."""
        rows = self.store.scan(_DB, _JOB_PREFIX, reverse=True, limit=limit)
        return [Job.from_record(record) for _, record in rows]

    async def save(self, job: Job) -> None:
        key = pack_key("ota", "job", job.id)

        def put(txn: WriteTxn) -> None:
            txn.put(_DB, key, job.to_record())
            old = txn.scan(_DB, _JOB_PREFIX, reverse=True)[MAX_JOBS:]
            for stale, _ in old:
                txn.delete(_DB, stale)

        await self.store.write(put)

    # --- the ledger ------------------------------------------------------------------

    def ledger(self) -> Ledger:
        return Ledger.from_record(self.store.get(_DB, _LEDGER_KEY))

    async def _update(self, change: Any) -> Ledger:
        def update(txn: WriteTxn) -> Ledger:
            before = Ledger.from_record(txn.get(_DB, _LEDGER_KEY))
            after = change(before)
            if after != before:
                txn.put(_DB, _LEDGER_KEY, after.to_record())
            return after

        return await self.store.write(update)

    async def raise_floor(self, version: str) -> Ledger:
        """The floor becomes `version` if that is higher (a committed version)."""
        return await self._update(
            lambda ledger: Ledger(
                _higher(ledger.floor, version), ledger.denied, ledger.time_high_water
            )
        )

    async def deny(self, failures: Iterable[DeniedVersion]) -> Ledger:
        """Add the versions that failed on this box (the first record of each is kept)."""
        failures = list(failures)

        def change(ledger: Ledger) -> Ledger:
            denied = dict(ledger.denied)
            for failure in failures:
                denied.setdefault(failure.version, failure)
            return Ledger(ledger.floor, denied, ledger.time_high_water)

        return await self._update(change)

    async def observe_time(self, at: int) -> Ledger:
        """The time high-water mark becomes `at` if that is later (a signed time)."""
        return await self._update(
            lambda ledger: Ledger(ledger.floor, ledger.denied, max(ledger.time_high_water, at))
        )
