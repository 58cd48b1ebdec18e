"""Semantic versions: the precedence rules of semver 2.0.0, and what is not a version."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota import Version

# The precedence example from semver.org §11, plus build metadata and bigger numbers.
ORDERED = [
    "0.0.1",
    "0.9.99",
    "1.0.0-0",
    "1.0.0-2",
    "1.0.0-10",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.2.0",
    "1.10.0",
    "2.0.0",
    "10.0.0",
]


def test_precedence_follows_semver() -> None:
    versions = [Version.parse(text) for text in ORDERED]
    for low, high in itertools.pairwise(versions):
        assert low < high and not high < low and low != high
    assert sorted(reversed(versions)) == versions


def test_build_metadata_is_ignored_for_precedence_but_kept_for_display() -> None:
    a, b = Version.parse("1.0.0+build.1"), Version.parse("1.0.0+build.2")
    assert a == b and hash(a) == hash(b) and not a < b
    assert str(a) == "1.0.0+build.1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.0",
        "1.0.0.0",
        "v1.0.0",
        "01.0.0",
        "1.00.0",
        "1.0.0-01",
        "1.0.0-",
        "1.0.0+",
        "1.0.0-a..b",
        " 1.0.0",
        "1.0.0 ",
        "1.0.0\n",
        "1.0.0-α",
        "١.0.0",
        "1" * 200 + ".0.0",
    ],
)
def test_not_a_version(text: str) -> None:
    with pytest.raises(ValueError):
        Version.parse(text)


idents = st.from_regex(r"(0|[1-9][0-9]{0,3}|[0-9]{0,5}[a-zA-Z-][0-9a-zA-Z-]{0,5})", fullmatch=True)
versions = st.builds(
    "{}.{}.{}{}{}".format,
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(0, 20),
    st.lists(idents, max_size=3).map(lambda xs: "-" + ".".join(xs) if xs else ""),
    st.lists(idents, max_size=2).map(lambda xs: "+" + ".".join(xs) if xs else ""),
)


@given(versions)
def test_parse_and_print_round_trip(text: str) -> None:
    assert str(Version.parse(text)) == text


@given(versions, versions)
def test_ordering_is_total_and_consistent(a: str, b: str) -> None:
    x, y = Version.parse(a), Version.parse(b)
    assert [x < y, x == y, y < x].count(True) == 1
