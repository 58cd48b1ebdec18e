"""Live settings from the fleet's config: a config key whose content overrides live keys.

`config.settings_key` names a key (tenant/app/env/name) whose effective version for this
box is a TOML, JSON or YAML table of sections, e.g.

    [log]
    level = "debug"
    [ratelimit]
    rate = 50.0

Only keys in LIVE_KEYS may appear, each checked by the same parser as the settings file;
one bad key refuses the whole overlay (the previous one stays). The overlay sits above
every local source (file, environment, flags) for the keys it names; a key it no longer
names falls back to the local value.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from typing import Any

import yaml

from appliance.settings.model import LIVE_KEYS, SECTIONS, Settings, SettingsError, section_fields


def parse_overlay(fmt: str, content: str) -> dict[str, Any]:
    """{dotted key: parsed value} from an overlay's content; SettingsError when refused."""
    try:
        if fmt == "toml":
            table = tomllib.loads(content)
        elif fmt == "json":
            table = json.loads(content)
        elif fmt == "yaml":
            table = yaml.safe_load(content)
        else:
            raise SettingsError(
                "config.settings_key", f"a settings overlay is toml, json or yaml, not {fmt}"
            )
    except (ValueError, yaml.YAMLError) as exc:
        raise SettingsError("config.settings_key", f"the overlay does not parse: {exc}") from None
    if not isinstance(table, dict):
        raise SettingsError("config.settings_key", "the overlay must be a table of sections")
    values: dict[str, Any] = {}
    for section, items in table.items():
        if section not in SECTIONS or not isinstance(items, dict):
            raise SettingsError(str(section), "not a settings section the overlay may set")
        fields = section_fields(section)
        for name, raw in items.items():
            dotted = f"{section}.{name}"
            if dotted not in LIVE_KEYS:
                raise SettingsError(
                    dotted, f"not a live setting; an overlay may set {', '.join(sorted(LIVE_KEYS))}"
                )
            try:
                values[dotted] = fields[name].metadata["parse"](raw)
            except ValueError as exc:
                raise SettingsError(dotted, str(exc), source="settings overlay") from None
    return values


def with_overlay(base: Settings, overlay: dict[str, Any]) -> Settings:
    """`base` with the overlay's values on top."""
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in overlay.items():
        section, name = dotted.split(".", 1)
        sections.setdefault(section, {})[name] = value
    changed = {name: replace(getattr(base, name), **values) for name, values in sections.items()}
    return replace(base, **changed)
