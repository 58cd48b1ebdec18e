"""Bus principals from tokens: the role's defaults, or the token's own patterns within them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.bus.principal import (
    ROLE_PATTERNS,
    TokenPatternError,
    check_token_patterns,
    token_principal,
)
from appliance.bus.topics import parse_pattern


def texts(patterns) -> list[str]:
    return [p.text for p in patterns]


def test_without_own_patterns_a_token_has_its_role_defaults():
    for role, (publish, subscribe) in ROLE_PATTERNS.items():
        principal = token_principal("t", role, None, None)
        assert (principal.publish, principal.subscribe) == (publish, subscribe)


def test_own_patterns_replace_the_role_defaults_one_direction_at_a_time():
    principal = token_principal("t", "operator", ["plant.>"], None)
    assert texts(principal.publish) == ["plant.>"] and texts(principal.subscribe) == [">"]
    nothing = token_principal("t", "admin", [], [])
    assert not nothing.permissions.may_publish("a") and nothing.subscribe == ()


def test_patterns_beyond_the_role_or_malformed_are_dropped_when_read():
    # A record edited by hand, or a role table narrowed since the token was made.
    principal = token_principal("t", "viewer", ["plant.>"], ["plant.>", "bad..x"])
    assert principal.publish == () and texts(principal.subscribe) == ["plant.>"]


@pytest.mark.parametrize(
    ("role", "publish", "subscribe"),
    [
        ("operator", ["plant.>", "lab.*.cmd"], ["plant.*"]),
        ("viewer", None, ["plant.>"]),
        ("viewer", [], []),
        ("replica", [], None),
        ("admin", [">"], [">"]),
    ],
)
def test_patterns_within_the_role_are_accepted(role, publish, subscribe):
    check_token_patterns(role, publish, subscribe)


pattern_texts = st.lists(st.sampled_from(["a", "b", "*", ">"]), min_size=1, max_size=4).map(
    ".".join
)


@given(
    st.sampled_from(sorted(ROLE_PATTERNS)),
    st.lists(pattern_texts, max_size=3),
    st.lists(pattern_texts, max_size=3),
)
def test_accepted_patterns_never_allow_more_than_the_role(role, publish, subscribe):
    """Whatever is accepted at creation, the principal allows no topic its role does not."""
    try:
        check_token_patterns(role, publish, subscribe)
    except TokenPatternError as exc:
        assert exc.code in ("invalid_pattern", "pattern_exceeds_role")
        return
    own = token_principal("t", role, publish, subscribe).permissions
    default = token_principal("t", role, None, None).permissions
    for text in publish + subscribe:
        pattern = parse_pattern(text)
        assert default.may_subscribe(pattern) or not own.may_subscribe(pattern)
        if pattern.is_literal:
            assert default.may_publish(text) or not own.may_publish(text)
    assert texts(token_principal("t", role, publish, subscribe).publish) == publish
