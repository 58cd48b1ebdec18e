"""Roles form a ladder: each one may do what the one below it may."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("viewer", "operator", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}


def role_allows(role: str, required: str) -> bool:
    return _RANK.get(role, -1) >= _RANK[required]


@dataclass(frozen=True)
class Principal:
    """Who is making a request: a token (directly, or through a web session)."""

    token_id: str
    name: str
    role: str
    via_session: bool = False
    session_csrf: str = ""

    @property
    def label(self) -> str:
        return f"token:{self.token_id}"
