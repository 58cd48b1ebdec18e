"""Load settings from defaults, a TOML file, the environment and CLI flags, in that order."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.settings.model import LIVE_KEYS, SECTIONS, Settings, SettingsError, section_fields

SYSTEM_CONFIG_FILE = Path("/etc/appliance/appliance.toml")
ENV_PREFIX = "APPLIANCE_"
MAX_CONFIG_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class SettingsSources:
    """What `load_settings` reads: kept so that SIGHUP can read the same sources again."""

    config_file: Path | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)  # "section.key" -> raw value
    environ: Mapping[str, str] | None = None  # None: os.environ at load time


def load_settings(sources: SettingsSources) -> Settings:
    """Build validated `Settings`; raise `SettingsError` naming the first bad key."""
    environ = dict(os.environ if sources.environ is None else sources.environ)
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}

    config_file = _choose_config_file(sources.config_file, environ)
    if config_file is not None:
        _merge(values, _read_toml(config_file), source=str(config_file))
    _merge(values, _from_environ(environ), source="environment")
    _merge(values, _nest(sources.overrides), source="command line")

    data = values["data"]
    if "dir" not in data:
        data["dir"] = _default_data_dir(environ)
    sections = {name: SECTIONS[name](**fields) for name, fields in values.items()}
    settings = Settings(**sections, config_file=config_file)
    _check_together(settings)
    return settings


def _check_together(settings: Settings) -> None:
    """Rules that span keys."""
    config = settings.config
    if config.mode == "replica" and not config.upstream:
        raise SettingsError("config.upstream", "a replica needs an upstream URL")
    if config.upstream and not config.upstream.startswith(("http://", "https://")):
        raise SettingsError("config.upstream", "expected an http:// or https:// URL")
    if config.settings_key:
        from appliance.config.errors import ConfigError
        from appliance.config.keys import parse_key

        try:
            parse_key(config.settings_key)
        except ConfigError as exc:
            raise SettingsError("config.settings_key", exc.message) from None


def _choose_config_file(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        return explicit
    if environ.get("APPLIANCE_CONFIG"):
        return Path(environ["APPLIANCE_CONFIG"])
    return SYSTEM_CONFIG_FILE if SYSTEM_CONFIG_FILE.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingsError("--config", f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_FILE_BYTES:
        raise SettingsError("--config", f"{path} is larger than {MAX_CONFIG_FILE_BYTES} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SettingsError("--config", f"{path} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("--config", f"{path} is not valid TOML: {exc}") from None


def _from_environ(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """`APPLIANCE_<SECTION>_<KEY>`; variables of unknown sections (APPLIANCE_TOKEN) are not ours."""
    found: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section in SECTIONS and key:
            found.setdefault(section, {})[key] = value
    return found


def _nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in flat.items():
        section, _, key = dotted.partition(".")
        nested.setdefault(section, {})[key] = value
    return nested


def _merge(values: dict[str, dict[str, Any]], layer: Mapping[str, Any], *, source: str) -> None:
    for section, table in layer.items():
        if section not in SECTIONS:
            raise SettingsError(section, "unknown section", source=source)
        if not isinstance(table, Mapping):
            raise SettingsError(section, "expected a table", source=source)
        fields = section_fields(section)
        for key, raw in table.items():
            dotted = f"{section}.{key}"
            if key not in fields:
                raise SettingsError(dotted, "unknown key", source=source)
            try:
                values[section][key] = fields[key].metadata["parse"](raw)
            except ValueError as exc:
                raise SettingsError(dotted, str(exc), source=source) from None


def _default_data_dir(environ: Mapping[str, str]) -> Path:
    if environ.get("STATE_DIRECTORY"):
        # systemd passes a colon-separated list when several StateDirectory= are set.
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    base = environ.get("XDG_STATE_HOME") or str(home / ".local" / "state")
    return Path(base) / "appliance"


def live_changes(old: Settings, new: Settings) -> tuple[dict[str, Any], list[str]]:
    """Split the differences between two settings into live-applicable ones and the rest."""
    live: dict[str, Any] = {}
    restart: list[str] = []
    for section in SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(before):
            if getattr(before, f.name) != getattr(after, f.name):
                dotted = f"{section}.{f.name}"
                if dotted in LIVE_KEYS:
                    live[dotted] = getattr(after, f.name)
                else:
                    restart.append(dotted)
    return live, restart
