"""Tasks, their inputs and results in the store, always changed through the group commit.

Databases: `tasks` (id -> record), `task_inputs` (id -> dtype + bytes), `task_results`
(id -> outputs), `task_keys` (idempotency key -> id). A submission writes the record, the
input and the key in one transaction; a finish writes the record and the result in one.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from appliance.store import Store, WriteTxn, pack_key
from appliance.tasks.inputs import decode_array, encode_array
from appliance.tasks.model import FINISHED, Task


class DuplicateKey(Exception):
    def __init__(self, existing: Task) -> None:
        self.existing = existing
        super().__init__(existing.id)


class TaskRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def add(self, task: Task, data: np.ndarray) -> Task:
        """Store a new task with its input; with an idempotency key already used, return
        the task that has it instead (raised as `DuplicateKey`)."""

        def write(txn: WriteTxn) -> Task | None:
            if task.idempotency_key is not None:
                existing_id = txn.get("task_keys", pack_key(task.idempotency_key))
                if existing_id is not None:
                    existing = txn.get("tasks", pack_key(existing_id))
                    if existing is not None:
                        return Task.from_record(existing)
                txn.put("task_keys", pack_key(task.idempotency_key), task.id)
            txn.put("tasks", pack_key(task.id), task.to_record())
            txn.put("task_inputs", pack_key(task.id), encode_array(data))
            return None

        existing = await self._store.write(write)
        if existing is not None:
            raise DuplicateKey(existing)
        return task

    async def save(self, task: Task, *, result: dict[str, Any] | None = None) -> Task:
        def write(txn: WriteTxn) -> None:
            txn.put("tasks", pack_key(task.id), task.to_record())
            if result is not None:
                txn.put("task_results", pack_key(task.id), result)

        await self._store.write(write)
        return task

    async def save_many(self, tasks: list[Task]) -> None:
        def write(txn: WriteTxn) -> None:
            for task in tasks:
                txn.put("tasks", pack_key(task.id), task.to_record())

        if tasks:
            await self._store.write(write)

    def get(self, task_id: str) -> Task | None:
        if not task_id or len(task_id) > 64 or "\x00" in task_id:
            return None
        record = self._store.get("tasks", pack_key(task_id))
        return Task.from_record(record) if record is not None else None

    def by_key(self, idempotency_key: str) -> Task | None:
        if "\x00" in idempotency_key:
            return None
        task_id = self._store.get("task_keys", pack_key(idempotency_key))
        return self.get(task_id) if task_id is not None else None

    def input(self, task_id: str) -> np.ndarray | None:
        stored = self._store.get("task_inputs", pack_key(task_id))
        return decode_array(stored) if stored is not None else None

    def result(self, task_id: str) -> dict[str, Any] | None:
        return self._store.get("task_results", pack_key(task_id))

    def list(
        self, *, state: str | None = None, limit: int = 100, before: str | None = None
    ) -> list[Task]:
        """Newest first; `before` pages on (an id from the previous page)."""
        tasks: list[Task] = []
        cursor = pack_key(before) if before else None

        def collect(txn) -> None:
            for _, record in txn.iter("tasks", before=cursor, reverse=True):
                if state is None or record["state"] == state:
                    tasks.append(Task.from_record(record))
                    if len(tasks) >= limit:
                        return

        self._store.view(collect)
        return tasks

    def all(self) -> list[Task]:
        return [Task.from_record(record) for _, record in self._store.scan("tasks")]

    async def delete_expired(self, older_than_s: float, *, batch: int = 500) -> list[str]:
        """Forget finished tasks whose results are older than `older_than_s`; return the
        states of those removed (at most `batch` of them)."""
        cutoff = time.time() - older_than_s
        finished = {str(state) for state in FINISHED}

        def write(txn: WriteTxn) -> list[str]:
            doomed = [
                (key, record)
                for key, record in txn.iter("tasks")
                if record["state"] in finished and (record["finished_at"] or 0) < cutoff
            ][:batch]
            for key, record in doomed:
                txn.delete("tasks", key)
                txn.delete("task_inputs", key)
                txn.delete("task_results", key)
                if record.get("idempotency_key") is not None:
                    txn.delete("task_keys", pack_key(record["idempotency_key"]))
            return [record["state"] for _, record in doomed]

        return await self._store.write(write)
