"""Who is on the other end of a bus connection, and what it may publish and subscribe to.

The bus authenticates with the appliance's API tokens (`appliance.auth.tokens`). For now a
token's bus permissions come from its role (per-token patterns can come later):

| role | publish (and request) | subscribe |
|---|---|---|
| `admin`, `operator` | `>` (every topic) | `>` |
| `viewer` | nothing | `>` |
| `replica` | nothing | nothing |

A request needs publish permission on its topic (calling a service is acting), so a
viewer can watch every topic but call nothing. `Authenticate` is what a server
`Connection` is given: token text (or None when the hello has none) in, a `BusPrincipal`
or None (refused: `unauthenticated`) out; `token_authenticator` builds one from a
`TokenStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.bus.topics import TAIL, Pattern, Permissions, parse_pattern

Authenticate = Callable[[str | None], "BusPrincipal | None"]

_EVERYTHING = (parse_pattern(TAIL),)
ROLE_PATTERNS: dict[str, tuple[tuple[Pattern, ...], tuple[Pattern, ...]]] = {
    "admin": (_EVERYTHING, _EVERYTHING),
    "operator": (_EVERYTHING, _EVERYTHING),
    "viewer": ((), _EVERYTHING),
    "replica": ((), ()),
}


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


def token_authenticator(tokens: Any) -> Authenticate:
    """An `Authenticate` over a `TokenStore` (anything with `authenticate(token) ->
    Principal` raising `Unauthenticated`)."""
    from appliance.auth.errors import Unauthenticated

    def authenticate(token: str | None) -> BusPrincipal | None:
        if token is None:
            return None
        try:
            principal = tokens.authenticate(token)
        except Unauthenticated:
            return None
        return BusPrincipal.for_role(principal.name, principal.role)

    return authenticate
