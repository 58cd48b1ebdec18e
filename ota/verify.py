"""From an unverified header to a trusted manifest, in the only safe order. Sans-IO.

`verify_header(header, trust_root, now=..., product=..., hardware=...,
installed_version=..., denylist=...)` is the device's gate, in the spirit of TUF's
`TrustedMetadataSet`: it takes values, does no I/O, and either returns a `Manifest` whose
every field may be acted on or raises `OtaError`. The steps, each of which stops the
bundle:

1. signatures over the exact manifest bytes against the trust root (`unsigned`,
   `unknown_key`, `bad_signature`, `below_threshold`); nothing in the manifest is even
   parsed before this holds;
2. the manifest's schema, paths, modes and sizes (`bad_manifest`, `bad_path`, `bad_mode`,
   `size_mismatch`);
3. the whole bundle against `max_bundle_size` (`too_large`);
4. the device's policy: `product` (`wrong_product`: the product is inside the signed
   manifest, so a bundle signed for another product is refused even with a good
   signature), `hardware` (`incompatible_hardware`; `*` in the manifest means any),
   expiry (`expired` when `now >= expires`), the `denylist` of versions that failed on
   this box (`denied_version`), and anti-rollback (`not_newer` unless the version is
   strictly greater than `installed_version`, by semver precedence).

`now` is a Unix time the caller chooses: the device passes the later of its clock and its
stored time high-water mark, so neither an unset clock nor a clock wound back lets an
expired bundle in. `product`, `hardware` and `installed_version` must be given; `None`
skips that check, which only offline tools (`ota verify`) should do.
"""

from __future__ import annotations

from collections.abc import Iterable

from ota.errors import ErrorCode, OtaError
from ota.header import BundleHeader
from ota.manifest import Manifest, parse_manifest
from ota.signatures import MANIFEST_CONTEXT
from ota.trust import TrustRoot
from ota.version import Version

__all__ = ["verify_header"]


def _version(value: str | Version) -> Version:
    return value if isinstance(value, Version) else Version.parse(value)


def verify_header(
    header: BundleHeader,
    trust_root: TrustRoot,
    *,
    now: float,
    product: str | None,
    hardware: str | None,
    installed_version: str | Version | None,
    denylist: Iterable[str | Version] = (),
    max_bundle_size: int | None = None,
) -> Manifest:
    """The manifest of `header` if every check in the module docstring passes."""
    trust_root.check(MANIFEST_CONTEXT, header.manifest, header.signatures)
    manifest = parse_manifest(header.manifest)

    bundle_size = header.size + manifest.total_size
    if max_bundle_size is not None and bundle_size > max_bundle_size:
        raise OtaError(
            ErrorCode.TOO_LARGE,
            f"the bundle is {bundle_size} bytes, the limit is {max_bundle_size}",
        )
    if product is not None and manifest.product != product:
        raise OtaError(
            ErrorCode.WRONG_PRODUCT,
            f"the bundle is for product {manifest.product!r}, this is {product!r}",
        )
    if hardware is not None and not manifest.supports_hardware(hardware):
        raise OtaError(
            ErrorCode.INCOMPATIBLE_HARDWARE,
            f"the bundle supports {list(manifest.hardware)}, this hardware is {hardware!r}",
        )
    if now >= manifest.expires:
        raise OtaError(
            ErrorCode.EXPIRED,
            f"the bundle expired at {manifest.expires}; it is now at least {int(now)}",
        )
    denied = {_version(item) for item in denylist}
    if manifest.version in denied:
        raise OtaError(
            ErrorCode.DENIED_VERSION,
            f"version {manifest.version} failed on this device before and is not retried",
        )
    if installed_version is not None:
        installed = _version(installed_version)
        if not manifest.version > installed:
            raise OtaError(
                ErrorCode.NOT_NEWER,
                f"version {manifest.version} is not newer than the installed {installed}",
            )
    return manifest
