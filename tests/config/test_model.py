"""Keys, content validation per format, and release rules: every refusal has its code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.config.errors import ConfigError
from appliance.config.keys import parse_key, parse_prefix
from appliance.config.model import check_content, check_version_record, new_version, parse_rules


def code_of(fn, *args) -> str:
    with pytest.raises(ConfigError) as caught:
        fn(*args)
    return caught.value.code


def test_keys_round_trip():
    key = parse_key("acme/pump-7/prod/limits.v2")
    assert (key.tenant, key.app, key.env, key.name) == ("acme", "pump-7", "prod", "limits.v2")
    assert str(key) == "acme/pump-7/prod/limits.v2"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a/b/c",
        "a/b/c/d/e",
        "a//c/d",
        "a/../c/d",
        "a/./c/d",
        "a/b/c/.hidden",
        "a/b/c/-dash",
        "a/b c/d/e",
        "a/b/c/ü",
        "a/b/c/" + "x" * 65,
        "a/b/c/d\n",
        "a/b/c/d%2f",
    ],
)
def test_bad_keys_are_refused(text):
    assert code_of(parse_key, text) == "invalid_key"


@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_cleanly(text):
    try:
        key = parse_key(text)
    except ConfigError as exc:
        assert exc.code == "invalid_key"
    else:
        assert str(key) == text


def test_prefixes():
    assert parse_prefix("acme/pu") == "acme/pu"
    assert code_of(parse_prefix, "acme/*") == "invalid_prefix"


@pytest.mark.parametrize(
    ("fmt", "content"),
    [
        ("json", '{"limit": 3.5, "on": true}'),
        ("toml", "limit = 3.5\n[pump]\non = true\n"),
        ("yaml", "limit: 3.5\npump:\n  on: true\n"),
        ("text", "any text, even { unbalanced"),
    ],
)
def test_valid_content(fmt, content):
    assert check_content(fmt, content, 1024) == content


@pytest.mark.parametrize(
    ("fmt", "content", "code"),
    [
        ("json", '{"limit": ', "content_does_not_parse"),
        ("json", '{"x": NaN}', "content_does_not_parse"),
        ("toml", "limit = = 3", "content_does_not_parse"),
        ("yaml", "a: [1, 2", "content_does_not_parse"),
        ("yaml", "!!python/object/apply:os.system ['true']", "content_does_not_parse"),
        ("yaml", "a: 1\n---\nb: 2\n", "content_does_not_parse"),
        ("text", "", "empty_content"),
        ("json", "", "empty_content"),
        ("text", "x" * 1025, "content_too_large"),
        ("text", "nul\x00inside", "invalid_content"),
        ("text", "\ud800", "invalid_content"),
        ("ini", "a=1", "invalid_format"),
        ("text", 42, "invalid_content"),
    ],
)
def test_invalid_content(fmt, content, code):
    assert code_of(check_content, fmt, content, 1024) == code


def test_a_version_records_the_sha256_of_its_content():
    version = new_version(3, "text", "hello", author="ops", comment="why", now=1.0, max_bytes=99)
    assert version.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert check_version_record(version.record(), 99) == version
    tampered = {**version.record(), "content": "hellO"}
    assert code_of(check_version_record, tampered, 99) == "checksum_mismatch"
    assert code_of(check_version_record, {**version.record(), "extra": 1}, 99) == "invalid_version"
    assert code_of(check_version_record, {**version.record(), "number": 0}, 99) == "invalid_version"


def test_rules_are_sorted_by_priority():
    rules = parse_rules(
        [
            {"labels": {}, "version": 1, "priority": 0},
            {"labels": {"site": "a"}, "version": 2, "priority": 10, "percent": 12.5},
        ],
        {1, 2},
    )
    assert [(r.version, r.priority, r.percent) for r in rules] == [(2, 10, 12.5), (1, 0, None)]


@pytest.mark.parametrize(
    ("rules", "code"),
    [
        ({"version": 1}, "invalid_rules"),
        ([{"version": 3, "priority": 0}], "unknown_version"),
        ([{"version": 1, "priority": 5}, {"version": 2, "priority": 5}], "duplicate_priority"),
        ([{"version": 1, "priority": 0, "percent": 0}], "invalid_rules"),
        ([{"version": 1, "priority": 0, "percent": 100.5}], "invalid_rules"),
        ([{"version": 1, "priority": 0, "percent": float("nan")}], "invalid_rules"),
        ([{"version": 1, "priority": 0, "labels": {"a": 1}}], "invalid_rules"),
        ([{"version": 1, "priority": 0, "labels": {"": "x"}}], "invalid_rules"),
        ([{"version": 1, "priority": 1.5}], "invalid_rules"),
        ([{"version": True, "priority": 0}], "invalid_rules"),
        ([{"version": 1, "priority": 0, "when": "now"}], "invalid_rules"),
        ([{"version": 1, "priority": 5000}], "invalid_rules"),
        ([{"version": 1, "priority": i} for i in range(65)], "invalid_rules"),
    ],
)
def test_bad_rules_are_refused(rules, code):
    assert code_of(parse_rules, rules, {1, 2}) == code
