"""Semantic versions (semver.org 2.0.0), compared by precedence.

`Version.parse("1.4.0-rc.2+build.7")` accepts exactly the grammar of semver 2.0.0 (no
leading `v`, no leading zeros in numeric identifiers) and raises `ValueError` otherwise.
Ordering follows the spec's precedence rules: numeric core first; a pre-release sorts
before its release; pre-release identifiers compare numerically when both are numeric,
numeric before alphanumeric, otherwise by ASCII; a shorter identifier list sorts first when
all shared ones are equal. Build metadata is kept for display but ignored by `==`, `<` and
`hash`: `1.0.0+a` and `1.0.0+b` are the same version, so re-signing a build does not make
it "newer" to anti-rollback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import total_ordering

__all__ = ["MAX_VERSION_LENGTH", "Version"]

MAX_VERSION_LENGTH = 128

_NUMBER = r"0|[1-9]\d*"
_PRE_IDENT = r"0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*"
_SEMVER = re.compile(
    rf"(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})"
    rf"(?:-(?P<pre>(?:{_PRE_IDENT})(?:\.(?:{_PRE_IDENT}))*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?",
    re.ASCII,
)


def _pre_key(ident: str) -> tuple[int, int, str]:
    # Numeric identifiers (0, numeric value) sort before alphanumeric ones (1, 0, text).
    return (0, int(ident), "") if ident.isdigit() else (1, 0, ident)


@total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A parsed semantic version; `str(v)` is the text it was parsed from."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = ()
    _key: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A release (no pre-release) sorts after every pre-release of the same core.
        pre = (1,) if not self.prerelease else (0, *(_pre_key(i) for i in self.prerelease))
        object.__setattr__(self, "_key", (self.major, self.minor, self.patch, pre))

    @classmethod
    def parse(cls, text: str) -> Version:
        if not isinstance(text, str):
            raise ValueError(f"a version is text, not {type(text).__name__}")
        if len(text) > MAX_VERSION_LENGTH:
            raise ValueError(f"version longer than {MAX_VERSION_LENGTH} characters")
        match = _SEMVER.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        pre, build = match["pre"], match["build"]
        return cls(
            int(match["major"]),
            int(match["minor"]),
            int(match["patch"]),
            tuple(pre.split(".")) if pre else (),
            tuple(build.split(".")) if build else (),
        )

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key == other._key

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)
