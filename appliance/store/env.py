"""The LMDB environment: opening, named databases, inline reads, growth, backup.

`Store.open` opens (creating if needed) `DIR/data.mdb` with synchronous commits, opens every
named database and brings the schema up to date. Writes go through `Store.write`, which
needs `Store.serve` running in a nursery (the group-commit writer); short-lived tools such
as the CLI may use `Store.write_now` instead, one synchronous transaction per call. LMDB
lets several processes share the environment; its own lock serialises their writers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import trio

from appliance.store import migrations
from appliance.store.errors import StoreClosed, StoreError, StoreFull, translate
from appliance.store.txn import ReadTxn, WriteTxn
from appliance.store.writer import GroupCommitWriter

T = TypeVar("T")
MiB = 1 << 20

# Every named database, in one place so that the layout is documented where it is made.
DATABASES: dict[str, str] = {
    "meta": "schema version, store id, creation time",
    "tokens": "API tokens by id: role, name, sha256 of the secret, expiry, revoked",
    "token_hashes": "sha256 of a token secret -> token id",
    "sessions": "web sessions by sha256 of the session id",
    "audit": "hash-chained audit log by sequence number",
    "kv": "general state of the services, keyed by service-specific tuples",
    "tasks": "task records by time-ordered id: kernel, params, state, attempts, history",
    "task_inputs": "task input arrays by task id: dtype, shape, little-endian bytes",
    "task_results": "task outputs by task id: named scalars and arrays",
    "task_keys": "idempotency key -> task id",
    "config_keys": "config key text -> latest version number, release rules, last revision",
    "config_versions": "config key text + NUL + 8-byte number -> immutable version record",
    "config_log": "8-byte config revision -> replication feed entry",
    "config_meta": "config head revision, compaction point, follower state",
}


class Store:
    """One open LMDB environment. Create with `Store.open`; close with `close`."""

    def __init__(self, env: lmdb.Environment, path: Path, max_map_size: int) -> None:
        self._env = env
        self.path = path
        self._max_map_size = max_map_size
        self._dbs = {name: env.open_db(name.encode()) for name in DATABASES}
        # Held while a transaction of this process is open on the main thread and while
        # the map is resized: LMDB forbids resizing under live transactions.
        self._resize_lock = threading.Lock()
        self._closed = False
        self._writer = GroupCommitWriter(
            self._begin_write, self._wrap_write, self._grow, self._translate
        )

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        map_size: int = 64 * MiB,
        max_map_size: int = 8192 * MiB,
        readonly: bool = False,
    ) -> Store:
        """Open the environment in directory `path`, migrating its schema when writable."""
        try:
            if not readonly:
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
            env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=len(DATABASES) + 8,
                subdir=True,
                readonly=readonly,
                sync=True,
                metasync=True,
                lock=True,
                max_readers=256,
                mode=0o600,
            )
        except (lmdb.Error, OSError) as exc:
            raise translate(exc, f"cannot open the store in {path}") from None
        if not readonly:
            _adopt_larger_file(env)
            try:
                with env.begin(write=True) as txn:
                    for name in DATABASES:
                        env.open_db(name.encode(), txn=txn)
            except lmdb.Error as exc:
                env.close()
                raise translate(exc, f"cannot create the databases in {path}") from None
        store = cls(env, path, max(max_map_size, map_size))
        try:
            if not readonly:
                store.write_now(migrations.migrate)
            else:
                store.view(migrations.check_version)
        except BaseException:
            store.close()
            raise
        return store

    # Reads: inline, on the calling thread, in a callback so no await can hold them open.

    def view(self, fn: Callable[[ReadTxn], T]) -> T:
        with self._read_txn() as txn:
            return fn(ReadTxn(txn, self._dbs))

    def get(self, db: str, key: bytes, default: Any = None) -> Any:
        return self.view(lambda txn: txn.get(db, key, default))

    def scan(self, db: str, prefix: bytes = b"", **options: Any) -> list[tuple[bytes, Any]]:
        return self.view(lambda txn: txn.scan(db, prefix, **options))

    @contextmanager
    def _read_txn(self) -> Iterator[lmdb.Transaction]:
        self._check_open()
        with self._resize_lock:
            txn = self._begin(write=False)
            try:
                yield txn
            finally:
                txn.abort()

    # Writes.

    async def write(self, fn: Callable[[WriteTxn], T]) -> T:
        """Run `fn` in the next group commit; return its result once it is on disk.

        `fn` runs in the writer thread and may run more than once (when the map grows), so
        it must only use the transaction. An exception it raises fails only this call."""
        self._check_open()
        return await self._writer.submit(fn)

    def write_now(self, fn: Callable[[WriteTxn], T]) -> T:
        """One synchronous durable transaction, for tools and start-up (blocks the thread)."""
        self._check_open()
        while True:
            txn = self._begin(write=True)
            try:
                result = fn(WriteTxn(txn, self._dbs))
                txn.commit()
                return result
            except lmdb.MapFullError:
                txn.abort()
                if not self._grow():
                    raise StoreFull("the store reached max_map_size_mb") from None
            except (lmdb.Error, OSError) as exc:
                txn.abort()
                raise self._translate(exc, "write") from None
            except BaseException:
                txn.abort()
                raise

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the group-commit writer until cancelled (then the batch in flight finishes)."""
        await self._writer.serve(task_status=task_status)

    # Health and housekeeping.

    def healthy(self, *, stuck_after_s: float = 10.0) -> bool:
        """True while reads work and no commit has been running for `stuck_after_s`."""
        if self._closed:
            return False
        started = self._writer.batch_started_at
        if started is not None and time.monotonic() - started > stuck_after_s:
            return False
        try:
            self.view(lambda txn: txn.get("meta", migrations.VERSION_KEY))
        except (StoreError, lmdb.Error):
            return False
        return True

    def stats(self) -> dict[str, Any]:
        info = self._env.info()
        stat = self._env.stat()
        return {
            "map_size": info["map_size"],
            "used_bytes": (info["last_pgno"] + 1) * stat["psize"],
            "commits": self._writer.commits,
            "writes": self._writer.writes,
        }

    def backup_to_fd(self, fd: int) -> None:
        """Write a compacted copy of the environment (a data.mdb file) to `fd`. Blocking."""
        self._check_open()
        try:
            self._env.copyfd(fd, compact=True)
        except lmdb.MapResizedError:
            with self._resize_lock:
                self._env.set_mapsize(0)
            self._env.copyfd(fd, compact=True)
        except (lmdb.Error, OSError) as exc:
            raise self._translate(exc, "backup") from None

    def backup_to_dir(self, directory: Path) -> Path:
        """Write a compacted copy as `directory/data.mdb` (the directory must not hold one)."""
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / "data.mdb"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(target, flags, 0o600)
        except OSError as exc:
            raise translate(exc, f"cannot create {target}") from None
        try:
            self.backup_to_fd(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        return target

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()
            with self._resize_lock:
                self._env.close()

    # Internals shared by both write paths.

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    def _begin(self, *, write: bool, parent: lmdb.Transaction | None = None) -> lmdb.Transaction:
        try:
            return self._env.begin(write=write, parent=parent)
        except lmdb.MapResizedError:
            # Another process (a CLI) grew the map: adopt its size and try again.
            self._env.set_mapsize(0)
            return self._env.begin(write=write, parent=parent)

    def _translate(self, exc: BaseException, what: str) -> StoreError:
        return translate(exc, what, self.path)

    def _begin_write(self, parent: lmdb.Transaction | None) -> lmdb.Transaction:
        return self._begin(write=True, parent=parent)

    def _wrap_write(self, txn: lmdb.Transaction) -> WriteTxn:
        return WriteTxn(txn, self._dbs)

    def _grow(self) -> bool:
        """Double the map (up to the maximum). Called with no write transaction open."""
        current = self._env.info()["map_size"]
        if current >= self._max_map_size:
            return False
        with self._resize_lock:
            self._env.set_mapsize(min(current * 2, self._max_map_size))
        return True


def _adopt_larger_file(env: lmdb.Environment) -> None:
    """A file bigger than the configured map (grown earlier) keeps its size."""
    env.set_mapsize(0)
