"""Where the config lives in etcd, and what its keys and events mean here, sans-IO.

Under a prefix P (default `/appliance/config/`, always ending in `/`):

    P versions/<tenant>/<app>/<env>/<name>/<number, 10 digits>  -> version record (JSON)
    P releases/<tenant>/<app>/<env>/<name>                      -> {"rules": [...]} (JSON)

A version record is `Version.record()`: number, format, content, sha256, author, comment,
created_at. Numbers are zero-padded so that etcd's byte order is version order. Other
keys under P are ignored (and said so). See docs/config.md, section "etcd".

This module turns a listing into a snapshot in the core's format and watch events into
feed entries (feed.make_entry), so that everything from etcd passes the same validation
as a feed from a hub: `repository.install_snapshot` and `repository.apply`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from appliance.config.errors import ConfigError, FeedError
from appliance.config.etcd_gateway import Event, KeyValue
from appliance.config.feed import make_entry
from appliance.config.keys import ConfigKey, parse_key
from appliance.config.model import check_version_record, parse_rules

DEFAULT_PREFIX = "/appliance/config/"
NUMBER_DIGITS = 10
MAX_NUMBER = 10**NUMBER_DIGITS - 1
_PREFIX = re.compile(r"[\x21-\x7e]{1,256}")


def check_prefix(prefix: str) -> str:
    """The prefix, ending in `/`; ConfigError `invalid_etcd_prefix` if it is empty or not
    printable ASCII without spaces."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            "invalid_etcd_prefix", "an etcd prefix is 1-256 printable ASCII characters, no spaces"
        )
    return prefix if prefix.endswith("/") else prefix + "/"


def versions_dir(prefix: str, key: ConfigKey) -> bytes:
    return f"{prefix}versions/{key}/".encode()


def version_path(prefix: str, key: ConfigKey, number: int) -> bytes:
    if not 1 <= number <= MAX_NUMBER:
        raise ConfigError("invalid_version", f"version numbers are 1..{MAX_NUMBER}")
    return versions_dir(prefix, key) + f"{number:0{NUMBER_DIGITS}d}".encode()


def release_path(prefix: str, key: ConfigKey) -> bytes:
    return f"{prefix}releases/{key}".encode()


@dataclass(frozen=True)
class Place:
    """What an etcd key under the prefix is: a version of a key, or a key's release."""

    kind: str  # "version" or "rules" (the feed's op)
    key: str
    number: int = 0


class NotOurs(ValueError):
    """An etcd key under the prefix that is not in the layout (ignored, with a warning)."""


def place_of(prefix: str, raw: bytes) -> Place:
    """Where `raw` (an etcd key) is in the layout; NotOurs when it is not in it."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise NotOurs(f"{raw[:200]!r}: not ASCII") from None
    if not text.startswith(prefix):
        raise NotOurs(f"{text[:200]!r}: not under {prefix}")
    rest = text[len(prefix) :]
    try:
        if rest.startswith("releases/"):
            return Place("rules", str(parse_key(rest[len("releases/") :])))
        if rest.startswith("versions/"):
            key, _, number = rest[len("versions/") :].rpartition("/")
            if len(number) != NUMBER_DIGITS or not number.isdigit() or int(number) < 1:
                raise NotOurs(f"{text[:200]!r}: a version number is {NUMBER_DIGITS} digits, >= 1")
            return Place("version", str(parse_key(key)), int(number))
    except ConfigError as exc:
        raise NotOurs(f"{text[:200]!r}: {exc.message}") from None
    raise NotOurs(f"{text[:200]!r}: neither versions/ nor releases/")


def max_value_bytes(max_content_bytes: int) -> int:
    """The largest etcd value accepted: a version's content escaped in JSON (at most 6x,
    \\u00XX) plus its other fields."""
    return 6 * max_content_bytes + 64 * 1024


def _json(kv: KeyValue, max_content_bytes: int) -> Any:
    if len(kv.value) > max_value_bytes(max_content_bytes):
        raise FeedError("feed_malformed", f"etcd key {_show(kv.key)}: value too large")
    try:
        return json.loads(kv.value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FeedError("feed_malformed", f"etcd key {_show(kv.key)}: not JSON") from None


def _show(raw: bytes) -> str:
    return raw[:200].decode("ascii", errors="replace")


def read_version(place: Place, kv: KeyValue, max_content_bytes: int) -> dict[str, Any]:
    """The version record stored at `kv`, checked like a feed's, its number the path's."""
    record = _json(kv, max_content_bytes)
    try:
        version = check_version_record(record, max_content_bytes)
    except ConfigError as exc:
        raise FeedError("feed_malformed", f"etcd key {_show(kv.key)}: {exc.message}") from None
    if version.number != place.number:
        raise FeedError(
            "feed_malformed",
            f"etcd key {_show(kv.key)}: holds version {version.number}, not {place.number}",
        )
    return version.record()


def read_release(kv: KeyValue, max_content_bytes: int) -> list[Any]:
    """The rules stored at `kv` (checked against the key's versions when applied)."""
    body = _json(kv, max_content_bytes)
    if not isinstance(body, dict) or set(body) != {"rules"} or not isinstance(body["rules"], list):
        raise FeedError("feed_malformed", f'etcd key {_show(kv.key)}: not {{"rules": [...]}}')
    return body["rules"]


def release_value(rules: list[dict[str, Any]]) -> bytes:
    return json.dumps({"rules": rules}, sort_keys=True, separators=(",", ":")).encode()


def version_value(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def snapshot_keys(
    prefix: str, kvs: Iterable[KeyValue], max_content_bytes: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """A listing of the prefix as the `keys` of a core snapshot (sorted, versions 1..n,
    rules validated and ordered as the store keeps them), and the etcd keys ignored.
    FeedError when what etcd holds is not a consistent config."""
    versions: dict[str, dict[int, dict[str, Any]]] = {}
    releases: dict[str, list[Any]] = {}
    ignored = []
    for kv in kvs:
        try:
            place = place_of(prefix, kv.key)
        except NotOurs as exc:
            ignored.append(str(exc))
            continue
        if place.kind == "version":
            versions.setdefault(place.key, {})[place.number] = read_version(
                place, kv, max_content_bytes
            )
        else:
            releases[place.key] = read_release(kv, max_content_bytes)
    keys = []
    for key in sorted(versions.keys() | releases.keys()):
        numbered = versions.get(key, {})
        if list(numbered) != list(range(1, len(numbered) + 1)):
            missing = sorted(set(range(1, max(numbered) + 1)) - set(numbered))
            raise FeedError(
                "feed_malformed", f"etcd holds versions of {key} with gaps (missing {missing[:5]})"
            )
        raw_rules = releases.get(key, [])
        if not numbered and not raw_rules:
            continue  # an empty release of a key that has no versions: nothing to keep
        try:
            rules = parse_rules(raw_rules, set(numbered))
        except ConfigError as exc:
            raise FeedError("feed_malformed", f"etcd release of {key}: {exc.message}") from None
        keys.append(
            {
                "key": key,
                "versions": [numbered[n] for n in sorted(numbered)],
                "rules": [rule.record() for rule in rules],
            }
        )
    return keys, ignored


def same_keys(stored: list[dict[str, Any]], listed: list[dict[str, Any]]) -> bool:
    """Whether a store's snapshot keys and a listing's hold the same config."""

    def by_key(keys: list[dict[str, Any]]) -> dict[str, tuple[list, list]]:
        return {item["key"]: (list(item["versions"]), list(item["rules"])) for item in keys}

    return by_key(stored) == by_key(listed)


def entries_of(
    prefix: str,
    events: Iterable[Event],
    *,
    next_revision: int,
    at: float,
    max_content_bytes: int,
    stored_sha256: Callable[[str, int], str | None],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Feed entries for watch events (revisions from `next_revision` on), and what was
    ignored and why.

    A PUT of a version becomes a `version` entry, unless this box has that version already
    with the same sha256 (a re-put: ignored); with another sha256 it is FeedError
    `etcd_version_changed` (versions are immutable). A PUT of a release becomes a `rules`
    entry. DELETE of a release becomes `rules` [] (no rule: the key's latest version
    applies); DELETE of a version is ignored (versions are immutable). Keys outside the
    layout are ignored."""
    entries: list[dict[str, Any]] = []
    ignored: list[str] = []
    seen: dict[tuple[str, int], str] = {}
    revision = next_revision
    for event in events:
        try:
            place = place_of(prefix, event.kv.key)
        except NotOurs as exc:
            ignored.append(str(exc))
            continue
        if place.kind == "version" and event.kind == "DELETE":
            ignored.append(
                f"{_show(event.kv.key)}: deleted in etcd; versions are immutable, kept here"
            )
            continue
        if place.kind == "version":
            record = read_version(place, event.kv, max_content_bytes)
            have = seen.get((place.key, place.number)) or stored_sha256(place.key, place.number)
            if have == record["sha256"]:
                ignored.append(f"{_show(event.kv.key)}: put again with the same content")
                continue
            if have is not None:
                raise FeedError(
                    "etcd_version_changed",
                    f"etcd key {_show(event.kv.key)} was overwritten with other content; "
                    "versions are immutable: publish a new version instead",
                )
            seen[(place.key, place.number)] = record["sha256"]
            body: Any = record
        else:
            body = [] if event.kind == "DELETE" else read_release(event.kv, max_content_bytes)
            has_versions = any(k == place.key for k, _ in seen) or stored_sha256(place.key, 1)
            if not body and not has_versions:
                ignored.append(f"{_show(event.kv.key)}: no rules for a key with no versions")
                continue
        entries.append(make_entry(revision, place.key, place.kind, body, at))
        revision += 1
    return entries, ignored
