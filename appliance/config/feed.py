"""The replication feed's entries, sans-IO: building, checksums, and checking on receipt.

Every change to the config is one entry with the global revision it made:

    {"revision": 17, "key": "acme/pump/prod/limits", "op": "version", "at": 1795431586.18,
     "version": {"number": 3, "format": "toml", "content": "...", "sha256": "...",
                 "author": "...", "comment": "...", "created_at": 1795431586.18},
     "checksum": "<sha256 hex>"}

`op` is `version` (a new version, in `version`) or `rules` (the key's complete release
rules, in `rules`). `checksum` is the sha256 of the entry's canonical JSON without the
checksum itself (keys sorted, no spaces, UTF-8). A replica applies an entry only if its
checksum holds, its revision is exactly one more than the last one applied, and its body
passes the same validation as a write on the hub.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from appliance.config.errors import FeedError
from appliance.config.keys import parse_key

OPS = ("version", "rules")
ENTRY_FIELDS = {"revision", "key", "op", "at", "checksum"}


def canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def entry_checksum(entry: dict[str, Any]) -> str:
    return hashlib.sha256(
        canonical({k: v for k, v in entry.items() if k != "checksum"})
    ).hexdigest()


def make_entry(revision: int, key: str, op: str, body: Any, at: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"revision": revision, "key": key, "op": op, "at": at, op: body}
    entry["checksum"] = entry_checksum(entry)
    return entry


def check_entry(entry: Any, expected_revision: int) -> dict[str, Any]:
    """The entry if it may be applied next; FeedError (`feed_out_of_order`,
    `feed_bad_checksum`, `feed_malformed`) otherwise. Bodies are validated on apply."""
    if not isinstance(entry, dict):
        raise FeedError("feed_malformed", "a feed entry is an object")
    op = entry.get("op")
    if op not in OPS or set(entry) != ENTRY_FIELDS | {op}:
        raise FeedError(
            "feed_malformed", f"feed entry fields are {sorted(ENTRY_FIELDS)} and the op's body"
        )
    revision = entry["revision"]
    if not isinstance(revision, int) or isinstance(revision, bool):
        raise FeedError("feed_malformed", "a feed entry's revision is an integer")
    at = entry["at"]
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        raise FeedError("feed_malformed", "a feed entry's time is a number")
    try:
        checksum = entry_checksum(entry)
    except (TypeError, ValueError):
        raise FeedError("feed_malformed", "a feed entry is not plain JSON") from None
    if entry["checksum"] != checksum:
        raise FeedError(
            "feed_bad_checksum",
            f"entry at revision {revision}: checksum does not match",
            revision=revision,
        )
    if revision != expected_revision:
        raise FeedError(
            "feed_out_of_order",
            f"expected revision {expected_revision}, the upstream sent {revision}",
            expected=expected_revision,
            got=revision,
        )
    try:
        parse_key(entry["key"])
    except Exception as exc:
        raise FeedError("feed_malformed", f"entry at revision {revision}: {exc}") from None
    return entry


def event_of(entry: dict[str, Any]) -> dict[str, Any]:
    """What a watcher is told about an entry (no content: it reads the key if it cares)."""
    event: dict[str, Any] = {
        "revision": entry["revision"],
        "key": entry["key"],
        "op": entry["op"],
        "at": entry["at"],
    }
    if entry["op"] == "version":
        event["version"] = entry["version"]["number"]
        event["sha256"] = entry["version"]["sha256"]
    else:
        event["rules"] = entry["rules"]
    return event
