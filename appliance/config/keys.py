"""Config keys: `tenant/app/env/name`, four segments of letters, digits, `.`, `_`, `-`.

A segment starts with a letter or digit (so `.`, `..` and hidden names are impossible), is
at most 64 characters long, and the key is stored as its UTF-8 (ASCII) text, so keys sort
by text and a key prefix is a byte prefix in the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.config.errors import ConfigError

SEGMENTS = ("tenant", "app", "env", "name")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_KEY_LENGTH = 4 * 64 + 3


@dataclass(frozen=True, order=True)
class ConfigKey:
    tenant: str
    app: str
    env: str
    name: str

    def __str__(self) -> str:
        return f"{self.tenant}/{self.app}/{self.env}/{self.name}"

    def encode(self) -> bytes:
        return str(self).encode()


def parse_key(text: str) -> ConfigKey:
    """A validated key, or ConfigError `invalid_key` naming the bad segment."""
    if not isinstance(text, str) or len(text) > MAX_KEY_LENGTH:
        raise ConfigError(
            "invalid_key", f"a key is tenant/app/env/name, at most {MAX_KEY_LENGTH} characters"
        )
    parts = text.split("/")
    if len(parts) != len(SEGMENTS):
        raise ConfigError(
            "invalid_key", f"a key has 4 segments, tenant/app/env/name; got {len(parts)}"
        )
    for segment, part in zip(SEGMENTS, parts, strict=True):
        if not _SEGMENT.fullmatch(part):
            raise ConfigError(
                "invalid_key",
                f"{segment} segment {part[:80]!r}: 1-64 of A-Z a-z 0-9 . _ -, "
                "starting with a letter or digit",
                segment=segment,
            )
    return ConfigKey(*parts)


def parse_prefix(text: str) -> str:
    """A key prefix for listings and watches: any leading part of a key ('' = all)."""
    if len(text) > MAX_KEY_LENGTH or not re.fullmatch(r"[A-Za-z0-9._/-]*", text):
        raise ConfigError("invalid_prefix", "a prefix is the start of a key: A-Z a-z 0-9 . _ - /")
    return text
