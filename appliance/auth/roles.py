"""Roles form a ladder: each one may do what the one below it may.

`replica` stands beside the ladder: a token another box uses to follow this one's config
feed. It may read the feed and snapshots and nothing else; only admin may also do that.
"""

from __future__ import annotations

from dataclasses import dataclass

LADDER = ("viewer", "operator", "admin")
ROLES = (*LADDER, "replica")
_RANK = {role: rank for rank, role in enumerate(LADDER)}


def role_allows(role: str, required: str) -> bool:
    if required == "replica":
        return role in ("replica", "admin")
    return _RANK.get(role, -1) >= _RANK[required]


@dataclass(frozen=True)
class Principal:
    """Who is making a request: a token (directly, or through a web session)."""

    token_id: str
    name: str
    role: str
    via_session: bool = False
    session_csrf: str = ""
    # The token's own bus topic patterns; None: its role's (appliance/bus/principal.py).
    bus_publish: tuple[str, ...] | None = None
    bus_subscribe: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return f"token:{self.token_id}"
