"""The settings overlay from a config key: only live keys, each checked, all or nothing."""

from __future__ import annotations

import pytest

from appliance.settings import Settings, SettingsError
from appliance.settings.overlay import parse_overlay, with_overlay


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        ("toml", '[log]\nlevel = "debug"\n[ratelimit]\nrate = 5\nburst = 7\n'),
        ("json", '{"log": {"level": "debug"}, "ratelimit": {"rate": 5, "burst": 7}}'),
        ("yaml", "log:\n  level: debug\nratelimit:\n  rate: 5\n  burst: 7\n"),
    ],
)
def test_every_format_gives_the_same_overlay(fmt, content):
    overlay = parse_overlay(fmt, content)
    assert overlay == {"log.level": "debug", "ratelimit.rate": 5.0, "ratelimit.burst": 7}
    settings = with_overlay(Settings(), overlay)
    assert (settings.log.level, settings.ratelimit.rate, settings.ratelimit.burst) == (
        "debug",
        5.0,
        7,
    )
    assert settings.http == Settings().http


@pytest.mark.parametrize(
    ("fmt", "content", "key"),
    [
        ("toml", '[http]\nlisten = "0.0.0.0:1"\n', "http.listen"),
        ("toml", "[ratelimit]\nrate = -1\n", "ratelimit.rate"),
        ("toml", '[log]\nlevel = "loud"\n', "log.level"),
        ("toml", "[nope]\nx = 1\n", "nope"),
        ("toml", "rate = 1\n", "rate"),
        ("toml", "[log\n", "config.settings_key"),
        ("json", "[1, 2]", "config.settings_key"),
        ("text", "log.level=debug", "config.settings_key"),
    ],
)
def test_refused_overlays_name_the_key(fmt, content, key):
    with pytest.raises(SettingsError) as caught:
        parse_overlay(fmt, content)
    assert caught.value.key == key
