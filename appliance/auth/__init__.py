"""Authentication, authorisation, rate limits and the audit log.

Tokens (`tokens`) carry a role; web sessions (`sessions`) are cookies made from a token;
`ratelimit` holds per-principal token buckets; `audit` appends to and verifies the
hash-chained log. The HTTP layer (`appliance.api`) uses these; so does the CLI.
"""

from appliance.auth.audit import AuditEntry, AuditLog, AuditVerification
from appliance.auth.errors import AuthError, Forbidden, Unauthenticated
from appliance.auth.ratelimit import RateLimiter
from appliance.auth.roles import ROLES, Principal, role_allows
from appliance.auth.sessions import SessionStore
from appliance.auth.tokens import TokenRecord, TokenStore

__all__ = [
    "ROLES",
    "AuditEntry",
    "AuditLog",
    "AuditVerification",
    "AuthError",
    "Forbidden",
    "Principal",
    "RateLimiter",
    "SessionStore",
    "TokenRecord",
    "TokenStore",
    "Unauthenticated",
    "role_allows",
]
