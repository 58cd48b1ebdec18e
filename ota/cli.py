"""The `ota` command: keys, build, verify, inspect, trust roots, push. The operator's side.

    ota keygen --out NAME                  NAME.key (mode 0600) and NAME.pub
    ota build DIR --product P --version V --key NAME.key [...] --out FILE
    ota verify FILE --pubkey NAME.pub [...] [--threshold N]   (or --trust-root FILE)
    ota inspect FILE                       the header and manifest, NOT verified
    ota trust init --pubkey NAME.pub [...] --out ROOT
    ota trust rotate --current ROOT --new NEW_ROOT --key NAME.key [...] --out ROTATION
    ota trust apply --current ROOT ROTATION [--out NEW_ROOT]
    ota push FILE --box URL [...] [--token T] [--parallel N] [--max-failures K]
                                           stream it to boxes, follow each install

Exit codes (docs/ota.md): 0 ok; 1 refused or failed (a bundle or rotation refused prints
`error: <code>: <detail>` with the stable code from `ota.errors`; a build that cannot be
made prints `ota: <why>`; `push` prints a line per box, with the box's code for each
failure); 2 usage; 74 I/O error (a file that cannot be read or written,
or a key, trust root or rotation file that already exists); 78 bad configuration (a key or
trust root file that is not valid).

Everything here is a thin edge: argument parsing, files, and turning exceptions into one
line and an exit code in `main`. The work is done by `ota.build`, `ota.files`,
`ota.trust`, `ota.push` and the sans-IO modules behind them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from ota.build import DAY, BuildError, build_bundle
from ota.errors import OtaError
from ota.files import read_header, verify_file
from ota.keys import KeyFileError, PublicKey, SecretKey
from ota.manifest import ANY_HARDWARE, parse_manifest
from ota.push import push_bundle
from ota.trust import MAX_TRUST_ROOT_BYTES, Rotation, TrustRoot, rotate, sign_rotation

__all__ = ["main"]

OK, FAILURE, USAGE, IO_ERROR, BAD_CONFIG = 0, 1, 2, 74, 78
DEFAULT_EXPIRES_DAYS = 90


class ConfigError(Exception):
    """A local key or trust root file is not valid (exit 78)."""


def _read_config(path: Path, limit: int = MAX_TRUST_ROOT_BYTES) -> bytes:
    with open(path, "rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{path}: larger than {limit} bytes")
    return data


def _load_secret(path: Path) -> SecretKey:
    try:
        return SecretKey.from_json(_read_config(path))
    except KeyFileError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _load_public(path: Path) -> PublicKey:
    try:
        return PublicKey.from_json(_read_config(path))
    except KeyFileError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _load_root(path: Path) -> TrustRoot:
    try:
        return TrustRoot.from_json(_read_config(path))
    except OtaError as exc:
        raise ConfigError(f"{path}: {exc.detail}") from None


def _root_from_keys(paths: Sequence[Path], threshold: int, serial: int = 1) -> TrustRoot:
    try:
        return TrustRoot(tuple(_load_public(path) for path in paths), threshold, serial)
    except OtaError as exc:
        raise ConfigError(exc.detail) from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (never overwrite) with `mode`, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as stream:
        os.fchmod(stream.fileno(), mode)
        stream.write(data)


def _write_replace(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.partial")
    with open(temp, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)


def cmd_keygen(args: argparse.Namespace) -> int:
    base = Path(args.out)
    name = args.name or base.name
    key = SecretKey.generate(name)
    secret_path, public_path = Path(f"{base}.key"), Path(f"{base}.pub")
    for path in (secret_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; not overwriting a key")
    _write_new(secret_path, key.to_json(), 0o600)
    _write_new(public_path, key.public.to_json(), 0o644)
    print(f"key {key.key_id}: secret {secret_path} (keep it offline), public {public_path}")
    return OK


def _created(args: argparse.Namespace) -> int:
    if args.created is not None:
        return args.created
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return int(epoch) if epoch and epoch.isdigit() else int(time.time())


def cmd_build(args: argparse.Namespace) -> int:
    keys = [_load_secret(path) for path in args.key]
    created = _created(args)
    manifest = build_bundle(
        args.dir,
        args.out,
        product=args.product,
        version=args.version,
        keys=keys,
        hardware=args.hardware or [ANY_HARDWARE],
        created=created,
        expires=created + args.expires_days * DAY,
    )
    print(
        f"built {args.out}: {manifest.product} {manifest.version}, "
        f"{len(manifest.files)} files, {manifest.total_size} payload bytes, "
        f"signed by {', '.join(key.key_id for key in keys)}; digest {manifest.digest}"
    )
    return OK


def cmd_verify(args: argparse.Namespace) -> int:
    if args.trust_root is not None:
        if args.pubkey or args.threshold is not None:
            args.parser.error("--trust-root excludes --pubkey and --threshold")
        root = _load_root(args.trust_root)
    elif args.pubkey:
        root = _root_from_keys(args.pubkey, args.threshold or 1)
    else:
        args.parser.error("give --pubkey (one or more) or --trust-root")
    manifest = verify_file(
        args.file,
        root,
        now=args.now,
        product=args.product,
        hardware=args.hardware,
        installed_version=args.installed_version,
        max_bundle_size=args.max_size,
    )
    if args.json:
        print(json.dumps({"verified": True, "manifest": manifest.to_json()}, indent=2))
    else:
        print(
            f"ok: {manifest.product} {manifest.version}, {len(manifest.files)} files, "
            f"{manifest.total_size} payload bytes, expires {manifest.expires}; "
            f"digest {manifest.digest}"
        )
    return OK


def cmd_inspect(args: argparse.Namespace) -> int:
    with open(args.file, "rb") as stream:
        header = read_header(stream)
        file_size = os.fstat(stream.fileno()).st_size
    report: dict = {
        "verified": False,
        "warning": "NOT VERIFIED: this is what the bundle claims; check it with `ota verify`",
        "file_size": file_size,
        "header_size": header.size,
        "signatures": [{"key_id": sig.key_id} for sig in header.signatures],
    }
    try:
        report["manifest"] = parse_manifest(header.manifest).to_json()
    except OtaError as exc:
        report["manifest_error"] = {"code": str(exc.code), "detail": exc.detail}
    print(
        "# UNVERIFIED bundle contents (nothing below is checked against any key)", file=sys.stderr
    )
    print(json.dumps(report, indent=2))
    return OK


def cmd_trust_init(args: argparse.Namespace) -> int:
    root = _root_from_keys(args.pubkey, args.threshold, args.serial)
    _write_new(Path(args.out), root.to_json(), 0o644)
    print(
        f"trust root {args.out}: serial {root.serial}, {len(root.keys)} keys, "
        f"threshold {root.threshold}"
    )
    return OK


def cmd_trust_rotate(args: argparse.Namespace) -> int:
    current = _load_root(args.current)
    new_bytes = _read_config(args.new)
    try:
        TrustRoot.from_json(new_bytes)
    except OtaError as exc:
        raise ConfigError(f"{args.new}: {exc.detail}") from None
    rotation = sign_rotation(new_bytes, [_load_secret(path) for path in args.key])
    rotate(current, rotation.root, rotation.signatures)  # refuse to write what a box refuses
    _write_new(Path(args.out), rotation.to_json(), 0o644)
    print(f"rotation {args.out}: accepted by {args.current} as it stands")
    return OK


def cmd_trust_apply(args: argparse.Namespace) -> int:
    current = _load_root(args.current)
    rotation = Rotation.from_json(_read_config(args.rotation, 4 * MAX_TRUST_ROOT_BYTES))
    new_root = rotate(current, rotation.root, rotation.signatures)
    if args.out is not None:
        _write_replace(Path(args.out), rotation.root)
    print(
        f"ok: serial {current.serial} -> {new_root.serial}, {len(new_root.keys)} keys, "
        f"threshold {new_root.threshold}"
    )
    return OK


def cmd_push(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("APPLIANCE_TOKEN")
    if not token:
        args.parser.error("give --token or set $APPLIANCE_TOKEN (an admin token of the boxes)")
    if len(set(args.box)) != len(args.box):
        args.parser.error("a box is given twice")
    if not args.file.is_file():
        raise FileNotFoundError(f"{args.file}: no such bundle file")
    results = trio.run(
        functools.partial(
            push_bundle,
            args.file,
            args.box,
            token,
            parallel=args.parallel,
            max_failures=args.max_failures,
            per_box_s=args.timeout,
            verify=str(args.cacert) if args.cacert else True,
        )
    )
    for result in results:
        print(result.line())
    good = sum(result.ok for result in results)
    print(f"{good} of {len(results)} boxes updated")
    return OK if good == len(results) else FAILURE


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ota",
        description="Build, sign, verify and inspect appliance OTA bundles; manage trust roots.",
        epilog="Exit codes: 0 ok, 1 refused/failed, 2 usage, 74 I/O error, 78 bad key or "
        "trust root file.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("keygen", help="make an ed25519 key pair: NAME.key and NAME.pub")
    p.add_argument("--out", required=True, metavar="NAME", help="path prefix for the files")
    p.add_argument("--name", help="a label stored with the key (default: NAME's base name)")
    p.set_defaults(handler=cmd_keygen)

    p = commands.add_parser("build", help="pack and sign a directory tree into a bundle")
    p.add_argument("dir", type=Path, metavar="DIR", help="the tree to pack")
    p.add_argument("--product", required=True, help="the product the bundle is for")
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.4.0")
    p.add_argument(
        "--key",
        action="append",
        type=Path,
        required=True,
        metavar="NAME.key",
        help="signing key (repeat for several)",
    )
    p.add_argument(
        "--hardware",
        action="append",
        metavar="H",
        help="compatible hardware (repeat; default: any)",
    )
    p.add_argument(
        "--expires-days",
        type=_positive_int,
        default=DEFAULT_EXPIRES_DAYS,
        metavar="N",
        help=f"days until it expires (default {DEFAULT_EXPIRES_DAYS})",
    )
    p.add_argument(
        "--created",
        type=int,
        metavar="UNIX",
        help="creation time (default: $SOURCE_DATE_EPOCH, else now)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p.set_defaults(handler=cmd_build)

    p = commands.add_parser("verify", help="verify a bundle offline against public keys")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--pubkey", action="append", type=Path, default=[], metavar="NAME.pub")
    p.add_argument("--threshold", type=_positive_int, help="signatures needed (default 1)")
    p.add_argument("--trust-root", type=Path, metavar="FILE", help="a trust root file instead")
    p.add_argument("--product", help="also require this product")
    p.add_argument("--hardware", help="also require support for this hardware")
    p.add_argument("--installed-version", metavar="V", help="also require a newer version")
    p.add_argument("--now", type=float, metavar="UNIX", help="judge expiry at this time")
    p.add_argument("--max-size", type=_positive_int, metavar="BYTES", help="size limit")
    p.add_argument("--json", action="store_true", help="print the verified manifest as JSON")
    p.set_defaults(handler=cmd_verify, parser=p)

    p = commands.add_parser("inspect", help="print a bundle's header and manifest, UNVERIFIED")
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(handler=cmd_inspect)

    trust = commands.add_parser("trust", help="trust root files and key rotations")
    trust_commands = trust.add_subparsers(dest="trust_command", required=True, metavar="COMMAND")
    p = trust_commands.add_parser("init", help="a trust root from public keys")
    p.add_argument("--pubkey", action="append", type=Path, required=True, metavar="NAME.pub")
    p.add_argument("--threshold", type=_positive_int, default=1)
    p.add_argument("--serial", type=_positive_int, default=1)
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p.set_defaults(handler=cmd_trust_init)
    p = trust_commands.add_parser("rotate", help="sign a new trust root for the devices")
    p.add_argument("--current", type=Path, required=True, metavar="ROOT")
    p.add_argument("--new", type=Path, required=True, metavar="NEW_ROOT")
    p.add_argument(
        "--key",
        action="append",
        type=Path,
        required=True,
        metavar="NAME.key",
        help="current and new keys, enough of each for both thresholds",
    )
    p.add_argument("--out", type=Path, required=True, metavar="ROTATION")
    p.set_defaults(handler=cmd_trust_rotate)
    p = trust_commands.add_parser("apply", help="check a rotation as a device would")
    p.add_argument("rotation", type=Path, metavar="ROTATION")
    p.add_argument("--current", type=Path, required=True, metavar="ROOT")
    p.add_argument("--out", type=Path, metavar="NEW_ROOT", help="write the new root here")
    p.set_defaults(handler=cmd_trust_apply)
    p = commands.add_parser("push", help="stream a bundle to boxes and follow each install")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument(
        "--box",
        action="append",
        required=True,
        metavar="URL",
        help="a box's base URL, e.g. http://10.0.0.7:8080 (repeat for a rollout)",
    )
    p.add_argument("--token", help="an admin token of the boxes (default: $APPLIANCE_TOKEN)")
    p.add_argument(
        "--parallel", type=_positive_int, default=1, metavar="N", help="boxes at once (1)"
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=0,
        metavar="K",
        help="stop starting boxes once more than K have failed (default 0)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="give up on a box after S seconds (default 900)",
    )
    p.add_argument("--cacert", type=Path, metavar="FILE", help="CA bundle for https boxes")
    p.set_defaults(handler=cmd_push, parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except OtaError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return FAILURE
    except ConfigError as exc:
        print(f"ota: bad configuration: {exc}", file=sys.stderr)
        return BAD_CONFIG
    except BuildError as exc:
        print(f"ota: {exc}", file=sys.stderr)
        return FAILURE
    except OSError as exc:
        print(f"ota: {exc}", file=sys.stderr)
        return IO_ERROR
    except KeyboardInterrupt:
        return FAILURE


if __name__ == "__main__":
    sys.exit(main())
