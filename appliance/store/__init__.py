"""State: one LMDB environment with named databases, CBOR values and ordered keys.

Reads are inline (`Store.get`, `Store.scan`, `Store.view`); every write goes through the
group-commit writer (`Store.write`), which acknowledges a caller only once its change is
on disk. See docs/architecture.md, "The store".
"""

from appliance.store.codec import decode_value, encode_value, pack_key, unpack_key
from appliance.store.env import DATABASES, ReadTxn, Store, WriteTxn
from appliance.store.errors import (
    StoreClosed,
    StoreError,
    StoreFull,
    StoreIOError,
    StoreVersionError,
)

__all__ = [
    "DATABASES",
    "ReadTxn",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreFull",
    "StoreIOError",
    "StoreVersionError",
    "WriteTxn",
    "decode_value",
    "encode_value",
    "pack_key",
    "unpack_key",
]
