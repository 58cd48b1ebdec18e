"""Who is on the other end of a bus connection, and what it may publish and subscribe to.

The bus authenticates with the appliance's API tokens (`appliance.auth.tokens`). A token's
bus permissions are its role's defaults:

| role | publish (and request) | subscribe |
|---|---|---|
| `admin`, `operator` | `>` (every topic) | `>` |
| `viewer` | nothing | `>` |
| `replica` | nothing | nothing |

unless the token record carries its own pattern lists (`bus_publish`, `bus_subscribe`),
which replace the role's list for that direction (an empty list: nothing). A token's own
patterns never exceed its role: `check_token_patterns` refuses them at creation
(`pattern_exceeds_role`: every pattern must be covered by the role's, so a viewer token
gets no publish pattern at all), and `token_principal` keeps only covered ones when it
builds the principal, in case the role table changed since.

A request needs publish permission on its topic (calling a service is acting), so a
viewer can watch every topic but call nothing. `Authenticate` is what a server
`Connection` is given: token text (or None when the hello has none) in, a `BusPrincipal`
or None (refused: `unauthenticated`) out; `token_authenticator` builds one from a
`TokenStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.bus.topics import (
    TAIL,
    Pattern,
    Permissions,
    TopicError,
    parse_pattern,
    pattern_covers,
)

Authenticate = Callable[[str | None], "BusPrincipal | None"]

MAX_TOKEN_PATTERNS = 32  # per direction, per token
_EVERYTHING = (parse_pattern(TAIL),)
ROLE_PATTERNS: dict[str, tuple[tuple[Pattern, ...], tuple[Pattern, ...]]] = {
    "admin": (_EVERYTHING, _EVERYTHING),
    "operator": (_EVERYTHING, _EVERYTHING),
    "viewer": ((), _EVERYTHING),
    "replica": ((), ()),
}


class TokenPatternError(ValueError):
    """A token's bus pattern list refused at creation. `code` is stable: `invalid_pattern`
    (bad syntax), `pattern_exceeds_role` (more than the role allows), `too_many_patterns`;
    `field` names the list (`bus_publish` or `bus_subscribe`)."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.code = code
        self.field = field


@dataclass(frozen=True)
class BusPrincipal:
    """An authenticated bus peer: its name (the token's), role and topic patterns."""

    name: str
    role: str
    publish: tuple[Pattern, ...] = ()
    subscribe: tuple[Pattern, ...] = ()
    permissions: Permissions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "permissions", Permissions(self.publish, self.subscribe))

    @classmethod
    def for_role(cls, name: str, role: str) -> BusPrincipal:
        """The role's default permissions (the table above); unknown roles get none."""
        publish, subscribe = ROLE_PATTERNS.get(role, ((), ()))
        return cls(name, role, publish, subscribe)

    @classmethod
    def with_patterns(
        cls, name: str, role: str, publish: Iterable[str], subscribe: Iterable[str]
    ) -> BusPrincipal:
        """Explicit patterns (TopicError `invalid_pattern` for a bad one)."""
        return cls(
            name,
            role,
            tuple(parse_pattern(p) for p in publish),
            tuple(parse_pattern(p) for p in subscribe),
        )


def check_token_patterns(
    role: str, publish: Sequence[str] | None, subscribe: Sequence[str] | None
) -> None:
    """Refuse a token's own pattern lists (None: the role's default) that are malformed,
    too long, or not covered by the role's defaults (TokenPatternError)."""
    role_publish, role_subscribe = ROLE_PATTERNS.get(role, ((), ()))
    for name, texts, allowed in (
        ("bus_publish", publish, role_publish),
        ("bus_subscribe", subscribe, role_subscribe),
    ):
        if texts is None:
            continue
        if len(texts) > MAX_TOKEN_PATTERNS:
            raise TokenPatternError(
                "too_many_patterns", name, f"at most {MAX_TOKEN_PATTERNS} patterns"
            )
        for index, text in enumerate(texts):
            try:
                pattern = parse_pattern(text)
            except TopicError as exc:
                raise TokenPatternError("invalid_pattern", name, f"[{index}]: {exc}") from None
            if not pattern_covers(allowed, pattern):
                what = "nothing" if not allowed else ", ".join(map(str, allowed))
                raise TokenPatternError(
                    "pattern_exceeds_role",
                    name,
                    f"[{index}] {text!r} exceeds the {role} role, which allows {what}",
                )


def token_principal(
    name: str, role: str, publish: Sequence[str] | None, subscribe: Sequence[str] | None
) -> BusPrincipal:
    """A token's principal: its own patterns where it has them (only those the role
    covers, and only valid ones), else the role's defaults."""
    role_publish, role_subscribe = ROLE_PATTERNS.get(role, ((), ()))
    return BusPrincipal(
        name,
        role,
        _own(publish, role_publish),
        _own(subscribe, role_subscribe),
    )


def _own(texts: Sequence[str] | None, allowed: tuple[Pattern, ...]) -> tuple[Pattern, ...]:
    if texts is None:
        return allowed
    own = []
    for text in texts:
        try:
            pattern = parse_pattern(text)
        except TopicError:
            continue  # refused at creation; a record edited by hand gets nothing from it
        if pattern_covers(allowed, pattern):
            own.append(pattern)
    return tuple(own)


def token_authenticator(tokens: Any) -> Authenticate:
    """An `Authenticate` over a `TokenStore` (anything with `authenticate(token) ->
    Principal` raising `Unauthenticated`); the principal's `bus_publish` and
    `bus_subscribe` (None: the role's) become its patterns."""
    from appliance.auth.errors import Unauthenticated

    def authenticate(token: str | None) -> BusPrincipal | None:
        if token is None:
            return None
        try:
            principal = tokens.authenticate(token)
        except Unauthenticated:
            return None
        return token_principal(
            principal.name,
            principal.role,
            getattr(principal, "bus_publish", None),
            getattr(principal, "bus_subscribe", None),
        )

    return authenticate
