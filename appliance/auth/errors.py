"""Auth errors; the HTTP layer maps them to 401 and 403 problem details."""


class AuthError(Exception):
    code = "auth_error"


class Unauthenticated(AuthError):
    """No credentials, or credentials that are unknown, expired or revoked."""

    code = "unauthenticated"


class Forbidden(AuthError):
    """Valid credentials whose role does not allow the request (or a missing CSRF token)."""

    code = "forbidden"


class CsrfRejected(Forbidden):
    code = "csrf_rejected"
