"""Settings: defaults, file, environment and flags, in that order; errors name the key."""

from pathlib import Path

import pytest

from appliance.settings import (
    Address,
    SettingsError,
    SettingsSources,
    live_changes,
    load_settings,
)


def load(tmp_path, toml: str | None = None, environ=None, **overrides):
    config = None
    if toml is not None:
        config = tmp_path / "appliance.toml"
        config.write_text(toml)
    return load_settings(
        SettingsSources(
            config_file=config, overrides=overrides, environ=environ or {"HOME": str(tmp_path)}
        )
    )


def test_embedded_defaults_need_no_file(tmp_path):
    settings = load(tmp_path)
    assert settings.http.listen == Address("127.0.0.1", 8080)
    assert settings.bus.tcp == Address("127.0.0.1", 7420)
    assert settings.data_dir == tmp_path / ".local" / "state" / "appliance"
    assert settings.bus_unix_path == settings.data_dir / "run" / "bus.sock"
    assert settings.log.level == "info"


def test_state_directory_from_systemd(tmp_path):
    settings = load(tmp_path, environ={"STATE_DIRECTORY": "/var/lib/appliance:/var/lib/x"})
    assert settings.data_dir == Path("/var/lib/appliance")


def test_file_then_environment_then_flags(tmp_path):
    toml = '[http]\nlisten = "0.0.0.0:9000"\n[log]\nlevel = "debug"\n[ratelimit]\nrate = 5\n'
    settings = load(tmp_path, toml)
    assert settings.http.listen == Address("0.0.0.0", 9000)
    assert settings.ratelimit.rate == 5.0
    environ = {
        "APPLIANCE_HTTP_LISTEN": "127.0.0.1:0",
        "APPLIANCE_LOG_LEVEL": "warning",
        "APPLIANCE_TOKEN": "not a setting",
        "HOME": str(tmp_path),
    }
    settings = load(tmp_path, toml, environ)
    assert settings.http.listen == Address("127.0.0.1", 0)
    assert settings.log.level == "warning"
    settings = load(tmp_path, toml, environ, **{"http.listen": "[::1]:81"})
    assert settings.http.listen == Address("::1", 81)
    assert str(settings.http.listen) == "[::1]:81"


def test_labels_from_toml_table_and_json_environment(tmp_path):
    settings = load(tmp_path, '[device.labels]\nsite = "north"\n')
    assert settings.device.labels == {"site": "north"}
    settings = load(tmp_path, environ={"APPLIANCE_DEVICE_LABELS": '{"rack": "7"}'})
    assert settings.device.labels == {"rack": "7"}


@pytest.mark.parametrize(
    ("toml", "environ", "key"),
    [
        ("[http]\nlisten = 8080\n", {}, "http.listen"),
        ('[http]\nlisten = "nohost"\n', {}, "http.listen"),
        ('[http]\nlisten = "127.0.0.1:70000"\n', {}, "http.listen"),
        ('[http]\nlistn = "127.0.0.1:1"\n', {}, "http.listn"),
        ('[htp]\nlisten = "127.0.0.1:1"\n', {}, "htp"),
        ('[log]\nlevel = "loud"\n', {}, "log.level"),
        ("[ratelimit]\nrate = -1\n", {}, "ratelimit.rate"),
        ("[ratelimit]\nburst = true\n", {}, "ratelimit.burst"),
        ("[http]\nmax_body_bytes = 12\n", {}, "http.max_body_bytes"),
        ("", {"APPLIANCE_RATELIMIT_RATE": "fast"}, "ratelimit.rate"),
        ("", {"APPLIANCE_DEVICE_LABELS": "{not json"}, "device.labels"),
        ("", {"APPLIANCE_HTTP_NOPE": "1"}, "http.nope"),
        ("[http\nlisten=", {}, "--config"),
        ("http = 3\n", {}, "http"),
    ],
)
def test_bad_values_name_their_key(tmp_path, toml, environ, key):
    with pytest.raises(SettingsError) as caught:
        load(tmp_path, toml, {"HOME": str(tmp_path), **environ})
    assert caught.value.key == key
    assert key in str(caught.value)


def test_missing_or_binary_file(tmp_path):
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(SettingsSources(config_file=tmp_path / "absent.toml", environ={}))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SettingsError, match="not UTF-8"):
        load_settings(SettingsSources(config_file=binary, environ={}))


def test_live_changes_split(tmp_path):
    old = load(tmp_path, '[log]\nlevel = "info"\n')
    new = load(
        tmp_path, '[log]\nlevel = "debug"\n[ratelimit]\nburst = 7\n[http]\nlisten = "1.2.3.4:5"\n'
    )
    live, restart = live_changes(old, new)
    assert live == {"log.level": "debug", "ratelimit.burst": 7}
    assert restart == ["http.listen"]
