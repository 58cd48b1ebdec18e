"""The box's verdict on a bundle header: `ota.verify_header` plus the ledger. Pure.

`DevicePolicy` holds the facts the box judges a bundle by, gathered once per upload:
the trust root, product, hardware, the version it runs, the stored floor, the denylist
(the store's ledger and the boot state's failed list together), the clock and the time
high-water mark, and the size limit. `check(header)` returns the trusted `Manifest` or
raises `OtaError`, in `verify_header`'s order (signatures before anything in the manifest
is parsed, then schema, size, product, hardware, expiry, denylist, anti-rollback) and then
the floor: a version must be above the one installed *and* above the highest version ever
committed here, so a rollback to an older slot does not reopen the door to older bundles.

Expiry is judged at `max(clock, time_high_water)`: a box whose clock was reset to 1970
still refuses a bundle that expired before the newest one it installed was signed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ota import BundleHeader, ErrorCode, Manifest, OtaError, TrustRoot, Version, verify_header

__all__ = ["DevicePolicy"]


@dataclass(frozen=True)
class DevicePolicy:
    trust_root: TrustRoot
    product: str
    hardware: str
    installed_version: str
    floor: str | None
    denylist: frozenset[str]
    clock: float
    time_high_water: int
    max_bundle_size: int

    @property
    def now(self) -> float:
        return max(self.clock, float(self.time_high_water))

    def check(self, header: BundleHeader) -> Manifest:
        manifest = verify_header(
            header,
            self.trust_root,
            now=self.now,
            product=self.product,
            hardware=self.hardware,
            installed_version=_semver_or_none(self.installed_version),
            denylist=_semver_only(self.denylist),
            max_bundle_size=self.max_bundle_size,
        )
        floor = _semver_or_none(self.floor)
        if floor is not None and not manifest.version > floor:
            raise OtaError(
                ErrorCode.NOT_NEWER,
                f"version {manifest.version} is not above this box's version floor {floor} "
                "(the highest version ever committed here)",
            )
        return manifest


def _semver_or_none(text: str | None) -> Version | None:
    """A version the firmware accepts need not be semver (e.g. a factory `factory-1`):
    such a version sets no bar, and every signed semver version is newer than it."""
    if not text:
        return None
    try:
        return Version.parse(text)
    except ValueError:
        return None


def _semver_only(versions: Iterable[str]) -> list[Version]:
    return [v for v in map(_semver_or_none, versions) if v is not None]
