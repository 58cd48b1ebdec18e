"""API tokens: `apl_<id>_<secret>`, stored only as the sha256 of the whole string.

A token is looked up by its hash, so the secret never sits in the store and a stolen
backup does not hand out access. Each token has a role and optionally an expiry; revoking
keeps the record (for the audit trail) and refuses the token from then on.

A token may carry its own bus topic patterns (`bus_publish`, `bus_subscribe`), which
replace its role's defaults on the bus and never exceed them; they are checked when the
token is created (`TokenPatternError`, see appliance/bus/principal.py). Records written
before these fields existed read as None: the role's defaults.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.auth.errors import Unauthenticated
from appliance.auth.roles import ROLES, Principal
from appliance.bus.principal import check_token_patterns
from appliance.store import Store, WriteTxn, pack_key

PREFIX = "apl_"
MAX_TOKEN_LENGTH = 128
BOOTSTRAPPED_KEY = pack_key("admin_token_bootstrapped")


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    role: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    created_by: str = ""
    bus_publish: list[str] | None = None
    bus_subscribe: list[str] | None = None

    def public(self) -> dict[str, Any]:
        return asdict(self)

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class TokenNotFound(LookupError):
    pass


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def new_token() -> tuple[str, str]:
    token_id = secrets.token_hex(6)
    return token_id, f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def validate_new(name: str, role: str, ttl_s: float | None) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not name or len(name) > 64 or not name.isprintable():
        raise ValueError("name must be 1-64 printable characters")
    if ttl_s is not None and not 60 <= ttl_s <= 10 * 365 * 86400:
        raise ValueError("ttl_s must be between 60 s and 10 years")


class TokenStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    # Write functions: the same for the service (group commit) and the CLI (write_now).

    @staticmethod
    def creation(
        name: str,
        role: str,
        *,
        ttl_s: float | None = None,
        created_by: str = "",
        bus_publish: Sequence[str] | None = None,
        bus_subscribe: Sequence[str] | None = None,
    ) -> tuple[Callable[[WriteTxn], TokenRecord], str]:
        """A write function that stores a new token, and the token string itself.
        ValueError for a bad name, role or ttl; TokenPatternError (a ValueError with a
        `code`) for bus patterns that are malformed or exceed the role."""
        validate_new(name, role, ttl_s)
        check_token_patterns(role, bus_publish, bus_subscribe)
        token_id, token = new_token()
        now = time.time()
        record = TokenRecord(
            id=token_id,
            name=name,
            role=role,
            created_at=now,
            expires_at=now + ttl_s if ttl_s is not None else None,
            created_by=created_by,
            bus_publish=list(bus_publish) if bus_publish is not None else None,
            bus_subscribe=list(bus_subscribe) if bus_subscribe is not None else None,
        )

        def write(txn: WriteTxn) -> TokenRecord:
            txn.put("tokens", pack_key(token_id), record.public())
            txn.put("token_hashes", token_hash(token), token_id)
            return record

        return write, token

    @staticmethod
    def revocation(token_id: str) -> Callable[[WriteTxn], TokenRecord]:
        def write(txn: WriteTxn) -> TokenRecord:
            raw = txn.get("tokens", pack_key(token_id))
            if raw is None:
                raise TokenNotFound(token_id)
            record = TokenRecord(**raw)
            if record.revoked_at is None:
                record = TokenRecord(**{**raw, "revoked_at": time.time()})
                txn.put("tokens", pack_key(token_id), record.public())
            return record

        return write

    async def create(self, name: str, role: str, **options: Any) -> tuple[TokenRecord, str]:
        write, token = self.creation(name, role, **options)
        return await self._store.write(write), token

    async def revoke(self, token_id: str) -> TokenRecord:
        return await self._store.write(self.revocation(token_id))

    # Reads.

    def get(self, token_id: str) -> TokenRecord | None:
        if not token_id or len(token_id) > 32 or "\x00" in token_id:
            return None
        raw = self._store.get("tokens", pack_key(token_id))
        return TokenRecord(**raw) if raw is not None else None

    def list(self) -> list[TokenRecord]:
        return [TokenRecord(**raw) for _, raw in self._store.scan("tokens")]

    def authenticate(self, token: str) -> Principal:
        """The principal for a bearer token, or `Unauthenticated` with the reason."""
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("malformed token")
        token_id = self._store.get("token_hashes", token_hash(token))
        record = self.get(token_id) if token_id is not None else None
        if record is None:
            raise Unauthenticated("unknown token")
        return self.principal_for(record)

    def principal_for(self, record: TokenRecord, **extra: Any) -> Principal:
        if record.revoked_at is not None:
            raise Unauthenticated("token revoked")
        if not record.usable(time.time()):
            raise Unauthenticated("token expired")
        return Principal(
            token_id=record.id,
            name=record.name,
            role=record.role,
            bus_publish=_patterns(record.bus_publish),
            bus_subscribe=_patterns(record.bus_subscribe),
            **extra,
        )

    # First start.

    def bootstrap_admin(self, path: Path) -> bool:
        """On first start, create an admin token and write it to `path` (mode 0600).

        Runs once per store (a flag in `meta`), so deleting the file does not mint a new
        admin token on the next start; `appliance token create --role admin` does."""
        if self._store.get("meta", BOOTSTRAPPED_KEY):
            return False
        write, token = self.creation("bootstrap-admin", "admin", created_by="first start")

        def write_once(txn: WriteTxn) -> bool:
            if txn.get("meta", BOOTSTRAPPED_KEY):
                return False
            write(txn)
            txn.put("meta", BOOTSTRAPPED_KEY, True)
            return True

        if not self._store.write_now(write_once):
            return False
        write_secret_file(path, token)
        return True


def _patterns(texts: list[str] | None) -> tuple[str, ...] | None:
    return tuple(texts) if texts is not None else None


def write_secret_file(path: Path, secret: str) -> None:
    """Write `secret` to `path` with mode 0600, atomically and durably."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
