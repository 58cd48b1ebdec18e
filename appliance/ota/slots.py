"""The slot manager, awaitable: each `firmware.SlotManager` call in a worker thread (they
take a file lock and fsync), its errors turned into `OtaRefused` in this one place.

    Refused (the boot state does not allow it now)   409, with the firmware's code
                                                     (update_pending, no_pending, ...)
    BadArgument with bad_slot or bad_reason          422
    FirmwareError, OSError (no root, state corrupt,  503 ota_unavailable
      lock busy, an I/O error)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

import appliance
from appliance.ota.errors import DeviceCode, OtaRefused
from firmware import BootState, FailedVersion, FirmwareError, Refused, SlotManager, Status

__all__ = ["Slots"]

T = TypeVar("T")
_STATUS = {"version_denied": 422, "bad_slot": 422, "bad_reason": 422}


class Slots:
    def __init__(self, root: Path) -> None:
        self.manager = SlotManager(root)

    @property
    def root(self) -> Path:
        return self.manager.root

    def running_slot(self) -> str | None:
        """The slot this process's code was loaded from (None: not from a slot)."""
        return self.manager.slot_of(Path(appliance.__file__).parent)

    async def status(self) -> Status:
        return await self._run(self.manager.status)

    async def inactive_slot(self) -> str:
        return await self._run(self.manager.inactive_slot)

    async def staging_dir(self, slot: str) -> Path:
        return await self._run(self.manager.staging_dir, slot)

    async def mark_complete(self, slot: str, version: str) -> None:
        await self._run(self.manager.mark_complete, slot, version)

    async def mark_pending(self, slot: str, version: str, tries: int) -> BootState:
        return await self._run(self.manager.mark_pending, slot, version, tries)

    async def commit(self) -> BootState:
        return await self._run(self.manager.commit)

    async def rollback(self, reason: str) -> FailedVersion:
        return await self._run(self.manager.rollback, reason)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except Refused as exc:
            raise OtaRefused(_STATUS.get(exc.code, 409), exc.code, exc.message) from None
        except FirmwareError as exc:
            detail = f"{exc.code}: {exc.message}"
            raise OtaRefused(503, DeviceCode.OTA_UNAVAILABLE, detail) from None
        except OSError as exc:
            raise OtaRefused(503, DeviceCode.OTA_UNAVAILABLE, str(exc)) from None
