"""Schema versions of the store and the migrations between them.

`MIGRATIONS[n]` takes a store at version n-1 to version n inside one write transaction, so
a migration either happens completely or not at all. A store written by a newer appliance
(a version above the last one known here) is refused rather than misread: that is what
an older version would meet after a rollback past a migration.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from appliance.store.codec import pack_key
from appliance.store.errors import StoreVersionError
from appliance.store.txn import ReadTxn, WriteTxn

VERSION_KEY = pack_key("schema_version")
STORE_ID_KEY = pack_key("store_id")
CREATED_KEY = pack_key("created_at")


def _v1_initial(txn: WriteTxn) -> None:
    txn.put("meta", STORE_ID_KEY, os.urandom(16).hex())
    txn.put("meta", CREATED_KEY, time.time())


MIGRATIONS: dict[int, Callable[[WriteTxn], None]] = {
    1: _v1_initial,
}
CURRENT_VERSION = max(MIGRATIONS)


def stored_version(txn: ReadTxn) -> int:
    return txn.get("meta", VERSION_KEY, 0)


def check_version(txn: ReadTxn) -> int:
    version = stored_version(txn)
    if version > CURRENT_VERSION:
        raise StoreVersionError(
            f"the store has schema version {version}; this appliance knows up to "
            f"{CURRENT_VERSION} (it was written by a newer appliance)"
        )
    return version


def migrate(txn: WriteTxn) -> int:
    """Apply every missing migration in order; return the version now stored."""
    version = check_version(txn)
    for target in range(version + 1, CURRENT_VERSION + 1):
        MIGRATIONS[target](txn)
        txn.put("meta", VERSION_KEY, target)
    return CURRENT_VERSION
