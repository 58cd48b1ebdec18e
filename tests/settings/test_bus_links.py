"""`bus.links`: tcp://[TOKEN@]HOST:PORT URLs, from a TOML list or a comma-separated string."""

from __future__ import annotations

import pytest

from appliance.settings.model import parse_bus_urls


def test_links_from_a_list_or_the_environment() -> None:
    assert parse_bus_urls(["tcp://10.0.0.2:7420", "tcp://apl_x@[::1]:7421"]) == (
        "tcp://10.0.0.2:7420",
        "tcp://apl_x@[::1]:7421",
    )
    assert parse_bus_urls("tcp://a:1, tcp://b:2,") == ("tcp://a:1", "tcp://b:2")
    assert parse_bus_urls("") == ()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("http://a:1", "expected tcp://"),
        ("tcp://a", "expected HOST:PORT"),
        ("tcp://a:0", "needs a host and a port"),
        ("tcp://a:1,tcp://tok@a:1", "listed twice"),
        (42, "list"),
    ],
)
def test_bad_links_are_refused_without_showing_a_token(raw, problem) -> None:
    with pytest.raises(ValueError, match=problem) as refused:
        parse_bus_urls(raw)
    assert "tok" not in str(refused.value)
