"""Web sessions: an HttpOnly, SameSite=Strict cookie made from a token, plus a CSRF token.

The cookie holds a random session id; the store keeps only its sha256, the token it came
from and a CSRF token. A cookie-authenticated write must echo the CSRF token in the
`X-CSRF-Token` header (SameSite=Strict already stops cross-site sends in current browsers;
the header also covers older ones and same-site subdomains). A session dies with its
token: revoking the token ends every session made from it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from appliance.auth.errors import CsrfRejected, Unauthenticated
from appliance.auth.roles import Principal
from appliance.auth.tokens import TokenStore
from appliance.store import Store, WriteTxn

COOKIE_NAME = "appliance_session"
CSRF_HEADER = "X-CSRF-Token"
MAX_COOKIE_LENGTH = 128
PURGE_PER_WRITE = 64


@dataclass(frozen=True)
class Session:
    session_id: str
    csrf_token: str
    expires_at: float


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).digest()


class SessionStore:
    def __init__(self, store: Store, tokens: TokenStore, ttl_s: float) -> None:
        self._store = store
        self._tokens = tokens
        self.ttl_s = ttl_s

    async def create(self, principal: Principal) -> Session:
        now = time.time()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(24), now + self.ttl_s)
        value = {
            "token_id": principal.token_id,
            "csrf": session.csrf_token,
            "created_at": now,
            "expires_at": session.expires_at,
        }

        def write(txn: WriteTxn) -> None:
            _purge_expired(txn, now)
            txn.put("sessions", _key(session.session_id), value)

        await self._store.write(write)
        return session

    async def delete(self, session_id: str) -> bool:
        return await self._store.write(lambda txn: txn.delete("sessions", _key(session_id)))

    def authenticate(self, session_id: str) -> Principal:
        if not session_id or len(session_id) > MAX_COOKIE_LENGTH:
            raise Unauthenticated("malformed session cookie")
        value = self._store.get("sessions", _key(session_id))
        if value is None:
            raise Unauthenticated("unknown session")
        if time.time() >= value["expires_at"]:
            raise Unauthenticated("session expired")
        record = self._tokens.get(value["token_id"])
        if record is None:
            raise Unauthenticated("the session's token no longer exists")
        return self._tokens.principal_for(record, via_session=True, session_csrf=value["csrf"])


def check_csrf(principal: Principal, header_value: str | None) -> None:
    """Cookie-authenticated writes must carry the session's CSRF token."""
    if not principal.via_session:
        return
    if not header_value or not hmac.compare_digest(
        header_value.encode(), principal.session_csrf.encode()
    ):
        raise CsrfRejected(f"cookie-authenticated writes need the {CSRF_HEADER} header")


def _purge_expired(txn: WriteTxn, now: float) -> None:
    """Drop a bounded number of expired sessions on each new one, so the table stays small."""
    expired = [
        key
        for key, value in txn.iter("sessions", limit=PURGE_PER_WRITE * 4)
        if value["expires_at"] <= now
    ][:PURGE_PER_WRITE]
    for key in expired:
        txn.delete("sessions", key)
