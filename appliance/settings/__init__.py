"""Settings: embedded defaults, a TOML file, `APPLIANCE_*` environment overrides, CLI flags.

Later sources override earlier ones. Every value is validated when loaded; a bad value is a
`SettingsError` that names the key, which the CLI turns into exit code 78.
"""

from appliance.settings.load import SettingsSources, live_changes, load_settings
from appliance.settings.model import (
    LIVE_KEYS,
    Address,
    DataSettings,
    DeviceSettings,
    HttpSettings,
    LogSettings,
    RateLimitSettings,
    Settings,
    SettingsError,
    StoreSettings,
)

__all__ = [
    "LIVE_KEYS",
    "Address",
    "DataSettings",
    "DeviceSettings",
    "HttpSettings",
    "LogSettings",
    "RateLimitSettings",
    "Settings",
    "SettingsError",
    "SettingsSources",
    "StoreSettings",
    "live_changes",
    "load_settings",
]
