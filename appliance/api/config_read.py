"""The effective-content read, shared by the quart route and `Front`'s fast path.

`GET /api/v1/config/{tenant}/{app}/{env}/{name}` is what every box polls, so `Front`
answers the plain form itself: `GET` or `HEAD`, no query string, no request body, and a
`Bearer` token that is valid and of the viewer role or above. `PlainReads` decides that
from the ASGI scope and gives `None` for everything else, which the quart route answers
(long polls with `?wait=`, session cookies, and every refused credential: 401 and 403 are
audited in the app's `after_request`, and the fast path writes nothing). For what it
answers it does what the guard and the route do, in their order: the token's checks, the
per-token rate limit, the service (503), the key (422), the resolution (404), and then
`answer`, which the route uses too.

Two caches keep it cheap, neither beyond what is correct. A token's id by the token: the
sha256 -> id row is written once and never changed, while the token's record, which
revocation (also by the CLI, from another process) and expiry change, is read on every
request. And each key's effective version at the current config revision: every change
of the config, local or followed, moves `notifier.revision` (the route's long poll
relies on the same), and the box's labels are fixed for the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appliance.api.context import ApiContext
from appliance.api.guard import take_rate_token
from appliance.api.problems import Problem
from appliance.auth import Principal, Unauthenticated, role_allows
from appliance.config.keys import parse_key
from appliance.config.model import Version
from appliance.config.service import ConfigService

PREFIX = "/api/v1/config/"
ROUTE = PREFIX + "<tenant>/<app>/<env>/<name>"
ROLE = "viewer"
MAX_TOKENS = 1024  # token ids remembered; all are forgotten when there would be more
MAX_CACHED_BYTES = 4 << 20  # content remembered; likewise
MEDIA_TYPES = {
    "json": "application/json",
    "toml": "application/toml",
    "yaml": "application/yaml",
    "text": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def service(ctx: ApiContext) -> ConfigService:
    if ctx.config is None:
        raise Problem(503, "config_unavailable", "the config service is not running")
    return ctx.config


def etag(version: Version) -> str:
    return f'"{version.sha256}"'


def matches(if_none_match: str | None, tag: str) -> bool:
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False


def answer(config: ConfigService, version: Version, if_none_match: str | None) -> Answer:
    """304 when `If-None-Match` names the version (with no content type or length: a 304
    carries no representation), else 200 with the content in its format's media type."""
    tag = etag(version)
    headers = {
        "ETag": tag,
        "X-Config-Version": str(version.number),
        "X-Config-Revision": str(config.notifier.revision),
        "X-Config-Format": version.format,
    }
    if matches(if_none_match, tag):
        return Answer(304, headers, b"")
    headers["Content-Type"] = MEDIA_TYPES[version.format]
    return Answer(200, headers, version.content.encode())


def first_headers(scope: dict[str, Any]) -> dict[bytes, bytes]:
    """The request's headers by name, the first of each (as quart's `headers.get`)."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name, value)
    return headers


def int_value(name: str, raw: str, low: int, high: int) -> int:
    """`raw` as an integer `low`-`high`, or the route's `422 validation_failed`."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or not low <= int(raw) <= high:
        raise Problem(
            422,
            "validation_failed",
            f"{name} must be an integer {low}-{high}",
            errors=[{"field": name, "message": f"expected an integer {low}-{high}"}],
        )
    return int(raw)


class TokenGate:
    """The guard's checks for `Front`'s fast paths: a request without a body and with a
    `Bearer` token that is valid and of `ROLE` or above, rate limited as the guard does.

    `admit` gives the principal; `None` when the quart app should answer instead (another
    kind of credential, a refused one, a body); raises the guard's 429 when the token's
    bucket is empty."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._token_ids: dict[str, str] = {}

    def admit(self, headers: dict[bytes, bytes]) -> Principal | None:
        if b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0":
            return None  # quart holds bodies to a limit (413)
        scheme, _, token = headers.get(b"authorization", b"").decode("latin1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        principal = self._principal(token.strip())
        if principal is None or not role_allows(principal.role, ROLE):
            return None
        take_rate_token(self.ctx, principal.label)  # the guard's key for a token
        return principal

    def _principal(self, token: str) -> Principal | None:
        """The token's principal as `TokenStore.authenticate` finds it, `None` when refused."""
        tokens = self.ctx.tokens
        try:
            token_id = self._token_ids.get(token)
            if token_id is None:
                principal = tokens.authenticate(token)
                if len(self._token_ids) >= MAX_TOKENS:
                    self._token_ids.clear()
                self._token_ids[token] = principal.token_id
                return principal
            record = tokens.get(token_id)
            return tokens.principal_for(record) if record is not None else None
        except Unauthenticated:
            return None


class PlainReads:
    """`Front`'s fast path. Called with an ASGI scope: the answer to a plain read, `None`
    when the quart route should answer instead, or the `Problem`, `ConfigError` or store
    error the route would have raised."""

    def __init__(self, ctx: ApiContext, gate: TokenGate) -> None:
        self.ctx = ctx
        self.gate = gate
        self._versions: dict[str, Version] = {}
        self._revision = -1
        self._cached_bytes = 0

    def __call__(self, scope: dict[str, Any]) -> Answer | None:
        if scope["method"] not in ("GET", "HEAD") or scope["query_string"]:
            return None
        key = scope["path"][len(PREFIX) :]
        segments = key.split("/")
        if len(segments) != 4 or not all(segments):
            return None  # another route, or an empty segment quart redirects
        headers = first_headers(scope)
        if self.gate.admit(headers) is None:
            return None
        config = service(self.ctx)
        version = self._version(config, key)
        tags = headers.get(b"if-none-match")
        return answer(config, version, tags.decode("latin1") if tags is not None else None)

    def _version(self, config: ConfigService, key: str) -> Version:
        if config.notifier.revision != self._revision or self._cached_bytes > MAX_CACHED_BYTES:
            self._versions.clear()
            self._revision, self._cached_bytes = config.notifier.revision, 0
        version = self._versions.get(key)
        if version is None:
            version, _ = config.effective(parse_key(key))
            self._versions[key] = version
            self._cached_bytes += len(version.content)
        return version
