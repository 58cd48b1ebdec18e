"""The audit log: an append-only, hash-chained record of every change and auth failure.

Entry n stores `prev` (entry n-1's hash) and `hash = sha256(prev || CBOR(entry without
hash))`; the head (last sequence number and hash) is kept in `meta` in the same
transaction. `verify` recomputes the chain, so a changed, removed, reordered or inserted
entry, or a cut-off tail, is found. It proves integrity against edits of the stored data,
not against someone who can rewrite the whole chain and head (that needs an external
anchor; see docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.store import ReadTxn, Store, WriteTxn, pack_key, unpack_key
from appliance.store.codec import encode_canonical

HEAD_KEY = pack_key("audit_head")
GENESIS = b"\x00" * 32


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: float
    actor: str
    action: str
    target: str
    outcome: str
    remote: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    prev: bytes = GENESIS
    hash: bytes = b""

    def body(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "remote": self.remote,
            "detail": self.detail,
            "prev": self.prev,
        }

    def public(self) -> dict[str, Any]:
        return {**self.body(), "prev": self.prev.hex(), "hash": self.hash.hex()}


def chain_hash(prev: bytes, body: dict[str, Any]) -> bytes:
    return hashlib.sha256(prev + encode_canonical(body)).digest()


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    entries: int
    problems: tuple[str, ...] = ()


class AuditLog:
    def __init__(self, store: Store) -> None:
        self._store = store

    @staticmethod
    def appending(
        actor: str,
        action: str,
        target: str,
        outcome: str,
        *,
        remote: str = "",
        detail: dict[str, Any] | None = None,
    ) -> Callable[[WriteTxn], AuditEntry]:
        stamp = time.time()

        def write(txn: WriteTxn) -> AuditEntry:
            head = txn.get("meta", HEAD_KEY) or {"seq": 0, "hash": GENESIS}
            entry = AuditEntry(
                seq=head["seq"] + 1,
                time=stamp,
                actor=actor,
                action=action,
                target=target,
                outcome=outcome,
                remote=remote,
                detail=detail or {},
                prev=head["hash"],
            )
            digest = chain_hash(entry.prev, entry.body())
            txn.put("audit", pack_key(entry.seq), {**entry.body(), "hash": digest})
            txn.put("meta", HEAD_KEY, {"seq": entry.seq, "hash": digest})
            return AuditEntry(**{**entry.body(), "hash": digest})

        return write

    async def append(self, actor: str, action: str, target: str, outcome: str, **kw: Any) -> None:
        await self._store.write(self.appending(actor, action, target, outcome, **kw))

    def entries(
        self, *, after: int = 0, limit: int = 100, newest_first: bool = False
    ) -> list[AuditEntry]:
        if newest_first:
            before = pack_key(after) if after else None
            rows = self._store.scan("audit", before=before, reverse=True, limit=limit)
        else:
            rows = self._store.scan("audit", after=pack_key(after), limit=limit)
        return [AuditEntry(**value) for _, value in rows]

    def verify(self) -> AuditVerification:
        return self._store.view(verify_chain)


def verify_chain(txn: ReadTxn) -> AuditVerification:
    problems: list[str] = []
    prev, expected_seq, count = GENESIS, 1, 0
    for key, value in txn.iter("audit"):
        count += 1
        try:
            entry = AuditEntry(**value)
        except TypeError:
            problems.append(f"entry {unpack_key(key)} is malformed")
            continue
        if unpack_key(key) != (entry.seq,):
            problems.append(f"entry stored under {unpack_key(key)} claims seq {entry.seq}")
        if entry.seq != expected_seq:
            problems.append(f"expected entry {expected_seq}, found {entry.seq} (entries missing)")
        if entry.prev != prev:
            problems.append(f"entry {entry.seq} does not link to the entry before it")
        if chain_hash(entry.prev, entry.body()) != entry.hash:
            problems.append(f"entry {entry.seq} was changed (its hash does not match)")
        prev, expected_seq = entry.hash, entry.seq + 1
    head = txn.get("meta", HEAD_KEY) or {"seq": 0, "hash": GENESIS}
    if head["seq"] != expected_seq - 1 or head["hash"] != prev:
        problems.append(
            f"the head names entry {head['seq']} but the chain ends at {expected_seq - 1}"
        )
    return AuditVerification(ok=not problems, entries=count, problems=tuple(problems))
