"""Thin views over py-lmdb transactions that speak CBOR values and named databases."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import lmdb

from appliance.store.codec import decode_value, encode_value


class ReadTxn:
    """A read view: `get` and `scan` over named databases. Never outlives its callback."""

    def __init__(self, txn: lmdb.Transaction, dbs: Mapping[str, Any]) -> None:
        self._txn = txn
        self._dbs = dbs

    def _db(self, name: str) -> Any:
        try:
            return self._dbs[name]
        except KeyError:
            raise KeyError(f"unknown database {name!r}") from None

    def get(self, db: str, key: bytes, default: Any = None) -> Any:
        raw = self._txn.get(key, db=self._db(db))
        return default if raw is None else decode_value(raw)

    def scan(
        self,
        db: str,
        prefix: bytes = b"",
        *,
        after: bytes | None = None,
        before: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, Any]]:
        """Items whose key starts with `prefix` and lies strictly between `after` and `before`,
        in key order, or from the highest key down when `reverse`."""
        return list(self.iter(db, prefix, after=after, before=before, reverse=reverse, limit=limit))

    def iter(
        self,
        db: str,
        prefix: bytes = b"",
        *,
        after: bytes | None = None,
        before: bytes | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[bytes, Any]]:
        count = 0
        with self._txn.cursor(db=self._db(db)) as cursor:
            if reverse and before is not None:
                positioned = cursor.prev() if cursor.set_range(before) else cursor.last()
                step = cursor.prev
            elif reverse:
                positioned = _seek_last_with_prefix(cursor, prefix)
                step = cursor.prev
            else:
                start = max(prefix, after + b"\x00") if after is not None else prefix
                positioned = cursor.set_range(start)
                step = cursor.next
            while positioned and (limit is None or count < limit):
                key = cursor.key()
                if not key.startswith(prefix):
                    if reverse and key > prefix:
                        positioned = step()  # above the prefix range: keep walking down
                        continue
                    break
                in_range = (after is None or key > after) and (before is None or key < before)
                if in_range:
                    yield key, decode_value(cursor.value())
                    count += 1
                elif not reverse and before is not None and key >= before:
                    break
                positioned = step()

    def count(self, db: str) -> int:
        return self._txn.stat(self._db(db))["entries"]


def _seek_last_with_prefix(cursor: lmdb.Cursor, prefix: bytes) -> bool:
    if not prefix:
        return cursor.last()
    upper = _prefix_upper_bound(prefix)
    if upper is not None and cursor.set_range(upper):
        return cursor.prev()
    return cursor.last()


def _prefix_upper_bound(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix`, if there is one."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class WriteTxn(ReadTxn):
    """A write view handed to a write function. It may run more than once (after map growth),
    so it must only touch the transaction, never the outside world."""

    def put(self, db: str, key: bytes, value: Any) -> None:
        self._txn.put(key, encode_value(value), db=self._db(db))

    def insert(self, db: str, key: bytes, value: Any) -> bool:
        """Put only if absent; False when the key exists."""
        return self._txn.put(key, encode_value(value), db=self._db(db), overwrite=False)

    def delete(self, db: str, key: bytes) -> bool:
        return self._txn.delete(key, db=self._db(db))
