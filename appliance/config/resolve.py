"""Which version of a key this box gets: release rules against the box's labels.

A key without rules serves its latest version. Otherwise the rules are tried from the
highest priority down (priorities are distinct, see model.py) and the first that matches
wins: every label of the rule must be a label of the box with the same value, and a rule
with `percent` matches only the boxes whose sticky bucket falls under it. The bucket is
a stable hash of the box's id and the key, 0-9999, so raising a canary from 10 % to 20 %
keeps the first 10 % and adds more; a different key shuffles the boxes differently. No
matching rule: the key has no effective version for this box.
"""

from __future__ import annotations

import hashlib
import platform
import socket
from dataclasses import dataclass, field
from typing import Any

from appliance.config.model import Rule

BUCKETS = 10_000


@dataclass(frozen=True)
class Box:
    """What resolution knows about this box: its id and labels."""

    device_id: str
    labels: dict[str, str] = field(default_factory=dict)

    def bucket(self, key: str) -> int:
        digest = hashlib.sha256(f"{self.device_id}\x00{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS


def automatic_labels(version: str) -> dict[str, str]:
    """Labels every box has without configuring them; settings labels may override."""
    return {"hostname": socket.gethostname(), "arch": platform.machine(), "version": version}


@dataclass(frozen=True)
class Resolution:
    version: int | None
    rule: int | None  # index into the rules by priority, None when no rule applies
    reasons: list[dict[str, Any]]  # one per rule, in priority order

    def explain(self) -> dict[str, Any]:
        return {"version": self.version, "matched_rule": self.rule, "rules": self.reasons}


def resolve(key: str, rules: list[Rule], latest: int | None, box: Box) -> Resolution:
    """The effective version of `key` for `box`, with the reason for each rule."""
    if not rules:
        reason = "no release rules: the latest version" if latest else "no versions"
        return Resolution(
            latest, None, [{"rule": None, "matched": latest is not None, "why": reason}]
        )
    ordered = sorted(rules, key=lambda rule: rule.priority, reverse=True)
    reasons: list[dict[str, Any]] = []
    chosen: tuple[int, int] | None = None
    for index, rule in enumerate(ordered):
        record = rule.record()
        if chosen is not None:
            reasons.append(
                {"rule": record, "matched": False, "why": "a higher-priority rule matched"}
            )
            continue
        why = _mismatch(rule, box, key)
        if why is None:
            chosen = (rule.version, index)
            reasons.append({"rule": record, "matched": True, "why": _match_reason(rule, box, key)})
        else:
            reasons.append({"rule": record, "matched": False, "why": why})
    if chosen is None:
        return Resolution(None, None, reasons)
    return Resolution(chosen[0], chosen[1], reasons)


def _mismatch(rule: Rule, box: Box, key: str) -> str | None:
    for name, wanted in sorted(rule.labels.items()):
        have = box.labels.get(name)
        if have is None:
            return f"label {name}={wanted!r} wanted; this box has no {name} label"
        if have != wanted:
            return f"label {name}={wanted!r} wanted; this box has {name}={have!r}"
    if rule.percent is not None:
        bucket = box.bucket(key)
        if bucket >= round(rule.percent * BUCKETS / 100):
            return f"bucket {bucket} of {BUCKETS} is not under {rule.percent:g} %"
    return None


def _match_reason(rule: Rule, box: Box, key: str) -> str:
    parts = [f"{name}={value!r}" for name, value in sorted(rule.labels.items())]
    why = "labels " + ", ".join(parts) + " match" if parts else "no labels: matches every box"
    if rule.percent is not None:
        why += f"; bucket {box.bucket(key)} of {BUCKETS} is under {rule.percent:g} %"
    return why
