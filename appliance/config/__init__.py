"""The config replica: versioned fleet configuration, label-based releases, a replication
feed, and watches. See docs/config.md."""

from appliance.config.changes import ChangeNotifier
from appliance.config.errors import ConfigError
from appliance.config.keys import ConfigKey, parse_key
from appliance.config.model import FORMATS, Rule, Version
from appliance.config.repository import ConfigRepository
from appliance.config.resolve import Box, Resolution, resolve

__all__ = [
    "FORMATS",
    "Box",
    "ChangeNotifier",
    "ConfigError",
    "ConfigKey",
    "ConfigRepository",
    "Resolution",
    "Rule",
    "Version",
    "parse_key",
    "resolve",
]
