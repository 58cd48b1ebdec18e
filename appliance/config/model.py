"""Versions and release rules, validated; plain records in the store and on the wire.

A version is immutable: its content (text), format, sha256 of the content's UTF-8 bytes,
author, comment and time. Content is checked against its format when it is written: JSON
and TOML must parse, YAML must parse as one document with the safe loader (no tags that
build objects), text must be UTF-8 without NUL. Release rules are a list of
`{labels, version, priority, percent?}`; within one key priorities must be distinct, so
resolution never has to break a tie.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from appliance.config.errors import ConfigError

FORMATS = ("json", "toml", "yaml", "text")
MAX_RULES = 64
MAX_COMMENT = 1024
MAX_AUTHOR = 128
PRIORITY_RANGE = (-1000, 1000)
LABEL_KEY_MAX = 63
LABEL_VALUE_MAX = 255


def sha256_hex(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


@dataclass(frozen=True)
class Version:
    number: int
    format: str
    content: str
    sha256: str
    author: str = ""
    comment: str = ""
    created_at: float = 0.0

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Version:
        return cls(**record)

    def summary(self) -> dict[str, Any]:
        """The record without its content (listings)."""
        record = self.record()
        del record["content"]
        record["size"] = len(self.content.encode())
        return record


@dataclass(frozen=True)
class Rule:
    version: int
    priority: int
    labels: dict[str, str] = field(default_factory=dict)
    percent: float | None = None

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "labels": dict(self.labels),
            "version": self.version,
            "priority": self.priority,
        }
        if self.percent is not None:
            record["percent"] = self.percent
        return record


def check_content(fmt: str, content: Any, max_bytes: int) -> str:
    """The content if it is valid for `fmt`, else ConfigError with a precise code."""
    if fmt not in FORMATS:
        raise ConfigError("invalid_format", f"format must be one of {', '.join(FORMATS)}")
    if not isinstance(content, str):
        raise ConfigError("invalid_content", "content must be a string")
    size = len(content.encode("utf-8", errors="surrogatepass"))
    if size == 0:
        raise ConfigError("empty_content", "content is empty")
    if size > max_bytes:
        raise ConfigError(
            "content_too_large", f"content is {size} bytes; at most {max_bytes}", limit=max_bytes
        )
    try:
        content.encode()
    except UnicodeEncodeError:
        raise ConfigError("invalid_content", "content is not valid UTF-8 text") from None
    if "\x00" in content:
        raise ConfigError("invalid_content", "content contains a NUL character")
    try:
        if fmt == "json":
            json.loads(content, parse_constant=_no_constant)
        elif fmt == "toml":
            tomllib.loads(content)
        elif fmt == "yaml":
            yaml.safe_load(content)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        where = _where(exc)
        raise ConfigError(
            "content_does_not_parse", f"content is not valid {fmt}{where}: {_first_line(exc)}"
        ) from None
    return content


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _where(exc: BaseException) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f" (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(exc, json.JSONDecodeError):
        return f" (line {exc.lineno}, column {exc.colno})"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def new_version(
    number: int, fmt: str, content: Any, *, author: str, comment: Any, now: float, max_bytes: int
) -> Version:
    content = check_content(fmt, content, max_bytes)
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise ConfigError("invalid_comment", f"comment must be a string of at most {MAX_COMMENT}")
    return Version(
        number=number,
        format=fmt,
        content=content,
        sha256=sha256_hex(content),
        author=author[:MAX_AUTHOR],
        comment=comment,
        created_at=now,
    )


def check_version_record(record: Any, max_bytes: int) -> Version:
    """A version as received from an upstream: every field checked, the sha256 recomputed."""
    if not isinstance(record, dict) or set(record) != set(Version.__dataclass_fields__):
        raise ConfigError("invalid_version", "a version record has exactly the known fields")
    number = record["number"]
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise ConfigError("invalid_version", "a version number is a positive integer")
    content = check_content(record["format"], record["content"], max_bytes)
    if record["sha256"] != sha256_hex(content):
        raise ConfigError("checksum_mismatch", f"version {number}: content does not match sha256")
    if not isinstance(record["author"], str) or not isinstance(record["comment"], str):
        raise ConfigError("invalid_version", "author and comment are strings")
    created = record["created_at"]
    if not isinstance(created, int | float) or not math.isfinite(created):
        raise ConfigError("invalid_version", "created_at is a number")
    return Version.from_record(record)


def parse_rules(raw: Any, known_versions: set[int]) -> list[Rule]:
    """Release rules from a request or a feed, sorted by priority (highest first).

    Refused: not a list, too many, unknown fields, bad labels, an unknown version, a
    priority out of range or used twice, a percent outside (0, 100]."""
    if not isinstance(raw, list):
        raise ConfigError("invalid_rules", "rules must be a list")
    if len(raw) > MAX_RULES:
        raise ConfigError("invalid_rules", f"at most {MAX_RULES} rules per key")
    rules: list[Rule] = []
    seen: dict[int, int] = {}
    for index, item in enumerate(raw):
        where = f"rules[{index}]"
        if not isinstance(item, dict):
            raise ConfigError("invalid_rules", f"{where} must be an object")
        unknown = set(item) - {"labels", "version", "priority", "percent"}
        if unknown:
            raise ConfigError("invalid_rules", f"{where}: unknown field {sorted(unknown)[0]!r}")
        labels = item.get("labels", {})
        _check_labels(labels, where)
        version = item.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ConfigError("invalid_rules", f"{where}.version must be an integer")
        if version not in known_versions:
            raise ConfigError(
                "unknown_version", f"{where}.version {version} does not exist", version=version
            )
        priority = item.get("priority")
        low, high = PRIORITY_RANGE
        if (
            not isinstance(priority, int)
            or isinstance(priority, bool)
            or not low <= priority <= high
        ):
            raise ConfigError("invalid_rules", f"{where}.priority must be an integer {low}..{high}")
        if priority in seen:
            raise ConfigError(
                "duplicate_priority",
                f"{where} and rules[{seen[priority]}] both have priority {priority}; "
                "priorities within a key must be distinct",
                priority=priority,
            )
        seen[priority] = index
        percent = item.get("percent")
        if percent is not None:
            if (
                not isinstance(percent, int | float)
                or isinstance(percent, bool)
                or not math.isfinite(percent)
                or not 0 < percent <= 100
            ):
                raise ConfigError("invalid_rules", f"{where}.percent must be in (0, 100]")
            percent = float(percent)
        rules.append(Rule(version=version, priority=priority, labels=dict(labels), percent=percent))
    rules.sort(key=lambda rule: rule.priority, reverse=True)
    return rules


def _check_labels(labels: Any, where: str) -> None:
    if not isinstance(labels, dict):
        raise ConfigError("invalid_rules", f"{where}.labels must be an object of strings")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError("invalid_rules", f"{where}.labels must map strings to strings")
        if not key or len(key) > LABEL_KEY_MAX or len(value) > LABEL_VALUE_MAX:
            raise ConfigError("invalid_rules", f"{where}.labels: {key[:80]!r} is empty or too long")


def rules_from_records(records: list[dict[str, Any]]) -> list[Rule]:
    """Rules as stored (already validated when written)."""
    return [
        Rule(
            version=r["version"],
            priority=r["priority"],
            labels=dict(r.get("labels", {})),
            percent=r.get("percent"),
        )
        for r in records
    ]
