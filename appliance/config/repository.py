"""The config in the store. Every change commits atomically with its revision and log entry.

Databases:
- `config_keys`:     key text -> {"latest", "rules": [...], "revision", "created_at"}
- `config_versions`: key text + NUL + 8-byte number -> version record
- `config_log`:      8-byte revision -> feed entry (see feed.py)
- `config_meta`:     b"head" -> {"revision", "compacted_through"}

The log keeps the last `log_retention` entries; older ones are deleted in the same
transactions that add new ones (at most COMPACT_BATCH per change), and `compacted_through`
says which revisions are gone. Reads are inline (LMDB readers never block); writes go
through the store's group-commit writer and return once durable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from appliance.config.errors import ConfigError, FeedError, Gone, NotFound
from appliance.config.feed import check_entry, make_entry
from appliance.config.keys import ConfigKey, parse_key
from appliance.config.model import (
    Rule,
    Version,
    check_version_record,
    new_version,
    parse_rules,
    rules_from_records,
)
from appliance.store import ReadTxn, Store, WriteTxn

HEAD = b"head"
COMPACT_BATCH = 64


def _rev(revision: int) -> bytes:
    return revision.to_bytes(8, "big")


def _version_key(key: str, number: int) -> bytes:
    return key.encode() + b"\x00" + number.to_bytes(8, "big")


class ConfigRepository:
    def __init__(self, store: Store, *, max_content_bytes: int, log_retention: int) -> None:
        self._store = store
        self.max_content_bytes = max_content_bytes
        self.log_retention = log_retention

    # Reads.

    def head(self) -> dict[str, int]:
        return self._store.get("config_meta", HEAD) or {"revision": 0, "compacted_through": 0}

    def key_record(self, key: ConfigKey) -> dict[str, Any] | None:
        return self._store.get("config_keys", key.encode())

    def version(self, key: ConfigKey, number: int) -> Version | None:
        record = self._store.get("config_versions", _version_key(str(key), number))
        return None if record is None else Version.from_record(record)

    def versions(self, key: ConfigKey) -> list[Version]:
        prefix = key.encode() + b"\x00"
        return [Version.from_record(v) for _, v in self._store.scan("config_versions", prefix)]

    def rules(self, key: ConfigKey) -> list[Rule]:
        record = self.key_record(key)
        return [] if record is None else rules_from_records(record["rules"])

    def keys(self, prefix: str = "", limit: int = 1000, after: str = "") -> list[dict[str, Any]]:
        def read(txn: ReadTxn) -> list[dict[str, Any]]:
            found = []
            start = after.encode() if after else b""
            for raw, record in txn.iter("config_keys", prefix.encode(), after=start or None):
                found.append({"key": raw.decode(), **record})
                if len(found) >= limit:
                    break
            return found

        return self._store.view(read)

    def log_after(self, after: int, limit: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Entries with revision > `after` (at most `limit`), and the head. Gone when
        `after` is older than what the log still holds."""

        def read(txn: ReadTxn) -> tuple[list[dict[str, Any]], dict[str, int]]:
            head = txn.get("config_meta", HEAD) or {"revision": 0, "compacted_through": 0}
            if after < head["compacted_through"]:
                raise Gone(
                    "revision_compacted",
                    f"revisions up to {head['compacted_through']} were compacted; "
                    "fetch a snapshot (GET /api/v1/config/snapshot)",
                    compacted_through=head["compacted_through"],
                    revision=head["revision"],
                )
            entries = [entry for _, entry in txn.scan("config_log", after=_rev(after), limit=limit)]
            return entries, head

        return self._store.view(read)

    def snapshot(self) -> dict[str, Any]:
        """Everything, at one revision: what a replica installs when its place in the log
        was compacted."""

        def read(txn: ReadTxn) -> dict[str, Any]:
            head = txn.get("config_meta", HEAD) or {"revision": 0, "compacted_through": 0}
            keys = []
            for raw, record in txn.iter("config_keys"):
                prefix = raw + b"\x00"
                versions = [v for _, v in txn.iter("config_versions", prefix)]
                keys.append({"key": raw.decode(), "rules": record["rules"], "versions": versions})
            return {"revision": head["revision"], "keys": keys}

        return self._store.view(read)

    # Writes on a hub.

    async def add_version(
        self, key: ConfigKey, fmt: str, content: Any, *, author: str, comment: Any = ""
    ) -> tuple[Version, dict[str, Any]]:
        # Validated before the write, so a bad content never takes the writer's time.
        new_version(
            1,
            fmt,
            content,
            author=author,
            comment=comment,
            now=0.0,
            max_bytes=self.max_content_bytes,
        )

        def write(txn: WriteTxn) -> tuple[Version, dict[str, Any]]:
            record = txn.get("config_keys", key.encode())
            number = 1 if record is None else record["latest"] + 1
            now = time.time()
            version = new_version(
                number,
                fmt,
                content,
                author=author,
                comment=comment,
                now=now,
                max_bytes=self.max_content_bytes,
            )
            entry = self._append(txn, str(key), "version", version.record(), now)
            _apply_version(txn, str(key), version, entry["revision"])
            return version, entry

        return await self._store.write(write)

    async def set_rules(self, key: ConfigKey, raw_rules: Any) -> tuple[list[Rule], dict[str, Any]]:
        def write(txn: WriteTxn) -> tuple[list[Rule], dict[str, Any]]:
            record = txn.get("config_keys", key.encode())
            if record is None:
                raise NotFound("key_not_found", f"no key {key}; put a version first")
            known = set(range(1, record["latest"] + 1))
            rules = parse_rules(raw_rules, known)
            body = [rule.record() for rule in rules]
            entry = self._append(txn, str(key), "rules", body, time.time())
            _apply_rules(txn, str(key), body, entry["revision"])
            return rules, entry

        return await self._store.write(write)

    def _append(self, txn: WriteTxn, key: str, op: str, body: Any, at: float) -> dict[str, Any]:
        head = dict(txn.get("config_meta", HEAD) or {"revision": 0, "compacted_through": 0})
        head["revision"] += 1
        entry = make_entry(head["revision"], key, op, body, at)
        txn.put("config_log", _rev(head["revision"]), entry)
        _compact(txn, head, self.log_retention)
        txn.put("config_meta", HEAD, head)
        return entry

    # Writes on a replica.

    async def apply(self, entries: list[dict[str, Any]]) -> int:
        """Apply upstream entries in order, all in one transaction with the revision.
        Raises FeedError (nothing applied) when one of them is out of order, has a bad
        checksum or a body the hub should never have accepted."""

        def write(txn: WriteTxn) -> int:
            head = dict(txn.get("config_meta", HEAD) or {"revision": 0, "compacted_through": 0})
            for entry in entries:
                check_entry(entry, head["revision"] + 1)
                key = entry["key"]
                try:
                    if entry["op"] == "version":
                        version = check_version_record(entry["version"], self.max_content_bytes)
                        record = txn.get("config_keys", key.encode())
                        expected = 1 if record is None else record["latest"] + 1
                        if version.number != expected:
                            raise ConfigError(
                                "feed_malformed",
                                f"version {version.number} of {key}, expected {expected}",
                            )
                        _apply_version(txn, key, version, entry["revision"])
                    else:
                        record = txn.get("config_keys", key.encode())
                        known = set() if record is None else set(range(1, record["latest"] + 1))
                        rules = parse_rules(entry["rules"], known)
                        _apply_rules(txn, key, [r.record() for r in rules], entry["revision"])
                except FeedError:
                    raise
                except ConfigError as exc:
                    raise FeedError(
                        "feed_malformed", f"entry at revision {entry['revision']}: {exc.message}"
                    ) from None
                txn.put("config_log", _rev(entry["revision"]), entry)
                head["revision"] = entry["revision"]
                _compact(txn, head, self.log_retention)
            txn.put("config_meta", HEAD, head)
            return head["revision"]

        return await self._store.write(write)

    async def install_snapshot(self, snapshot: Any) -> int:
        """Replace the whole config with an upstream snapshot, in one transaction."""
        revision, keys = _check_snapshot(snapshot, self.max_content_bytes)

        def write(txn: WriteTxn) -> int:
            for db in ("config_keys", "config_versions", "config_log"):
                for raw, _ in txn.scan(db):
                    txn.delete(db, raw)
            for key, versions, rules in keys:
                for version in versions:
                    _apply_version(txn, key, version, revision)
                _apply_rules(txn, key, rules, revision)
            txn.put("config_meta", HEAD, {"revision": revision, "compacted_through": revision})
            return revision

        return await self._store.write(write)

    def extra(self, name: str) -> Any:
        return self._store.get("config_meta", name.encode())

    async def set_extra(self, name: str, value: Any) -> None:
        await self._store.write(lambda txn: txn.put("config_meta", name.encode(), value))

    def read(self, fn: Callable[[ReadTxn], Any]) -> Any:
        return self._store.view(fn)


def _apply_version(txn: WriteTxn, key: str, version: Version, revision: int) -> None:
    record = txn.get("config_keys", key.encode())
    if record is None:
        record = {"latest": 0, "rules": [], "revision": revision, "created_at": version.created_at}
    record = {**record, "latest": version.number, "revision": revision}
    txn.put("config_versions", _version_key(key, version.number), version.record())
    txn.put("config_keys", key.encode(), record)


def _apply_rules(txn: WriteTxn, key: str, rules: list[dict[str, Any]], revision: int) -> None:
    record = txn.get("config_keys", key.encode())
    txn.put("config_keys", key.encode(), {**record, "rules": rules, "revision": revision})


def _compact(txn: WriteTxn, head: dict[str, int], retention: int) -> None:
    for _ in range(COMPACT_BATCH):
        if head["revision"] - head["compacted_through"] <= retention:
            return
        head["compacted_through"] += 1
        txn.delete("config_log", _rev(head["compacted_through"]))


def _check_snapshot(
    snapshot: Any, max_bytes: int
) -> tuple[int, list[tuple[str, list[Version], list[dict]]]]:
    try:
        revision = snapshot["revision"]
        if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
            raise TypeError
        keys = []
        for item in snapshot["keys"]:
            key = str(parse_key(item["key"]))
            versions = [check_version_record(v, max_bytes) for v in item["versions"]]
            numbers = [v.number for v in versions]
            if numbers != list(range(1, len(numbers) + 1)):
                raise FeedError("feed_malformed", f"snapshot: versions of {key} are not 1..n")
            rules = parse_rules(item["rules"], set(numbers))
            keys.append((key, versions, [r.record() for r in rules]))
    except FeedError:
        raise
    except ConfigError as exc:
        raise FeedError("feed_malformed", f"snapshot: {exc.message}") from None
    except (KeyError, TypeError, AttributeError):
        raise FeedError("feed_malformed", "snapshot: not {revision, keys: [...]}") from None
    return revision, keys
