"""Label selectors: parsing with positions, Kubernetes matching semantics, the registry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.bus.selectors import (
    MAX_SELECTOR_LENGTH,
    NodeRegistry,
    Op,
    Requirement,
    Selector,
    SelectorError,
    matches,
    parse_selector,
)


def test_parse_every_form():
    selector = parse_selector(
        "env=prod, tier==web,zone!=z1, role in (a, b),kind notin (x),gpu,!legacy"
    )
    assert selector.requirements == (
        Requirement("env", Op.EQUALS, frozenset({"prod"})),
        Requirement("tier", Op.EQUALS, frozenset({"web"})),
        Requirement("zone", Op.NOT_EQUALS, frozenset({"z1"})),
        Requirement("role", Op.IN, frozenset({"a", "b"})),
        Requirement("kind", Op.NOT_IN, frozenset({"x"})),
        Requirement("gpu", Op.EXISTS),
        Requirement("legacy", Op.NOT_EXISTS),
    )
    assert str(selector) == "env=prod,tier=web,zone!=z1,role in (a,b),kind notin (x),gpu,!legacy"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "a",
        "!a",
        "! a",
        "a=",
        "a = b",
        "a=,b",
        "example.com/app=x",
        "area.region in (eu-west, us_east)",
        "a in (x),b notin (y,z)",
        "k=v.1-2_3",
    ],
)
def test_canonical_text_round_trips(text):
    selector = parse_selector(text)
    assert parse_selector(str(selector)) == selector


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("a=b,", 4, "expected a label key, got the end"),
        (",a", 0, "expected a label key, got ','"),
        ("a b", 2, "expected =, ==, !=, in, notin"),
        ("a=b c", 4, "expected ',' or the end after a requirement"),
        ("a in b", 5, "expected '(' after in"),
        ("a in ()", 6, "expected a label value, got ')'"),
        ("a in (x", 7, "expected ',' or ')'"),
        ("a in (x,)", 8, "expected a label value"),
        ("a notin (x y)", 11, "expected ',' or ')'"),
        ("in=x", 0, "expected a label key, got 'in'"),
        ("!", 1, "expected a label key, got the end"),
        ("!a=b", 2, "expected ',' or the end after a requirement"),
        ("a=(b)", 2, "expected a label value, got '('"),
        ("a=!b", 2, "expected a label value, got '!'"),
        ("-a=b", 0, "label key '-a'"),
        ("a=b-", 2, "label value 'b-'"),
        ("Example.com/a=b", 0, "prefix 'Example.com'"),
        ("/a=b", 0, "prefix ''"),
        ("a=" + "v" * 64, 2, "label value"),
        ("x" * 64, 0, "label key"),
        ("a==", 3, None),  # the empty value is fine; asserted below
    ],
)
def test_parse_errors_have_positions(text, position, fragment):
    if fragment is None:
        assert parse_selector(text).requirements[0].values == frozenset({""})
        return
    with pytest.raises(SelectorError) as caught:
        parse_selector(text)
    assert caught.value.code == "invalid_selector"
    assert caught.value.position == position
    assert fragment in caught.value.message
    assert f"at {position}" in str(caught.value)


def test_too_long_and_not_text():
    with pytest.raises(SelectorError) as caught:
        parse_selector("a," * MAX_SELECTOR_LENGTH)
    assert caught.value.position == MAX_SELECTOR_LENGTH
    with pytest.raises(SelectorError):
        parse_selector(["a"])  # type: ignore[arg-type]


LABELS = {"env": "prod", "tier": "web", "empty": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("env=prod", True),
        ("env==prod", True),
        ("env=dev", False),
        ("missing=x", False),
        ("env!=dev", True),
        ("env!=prod", False),
        ("missing!=x", True),  # absent counts as "not equal", as in Kubernetes
        ("env in (dev,prod)", True),
        ("env in (dev)", False),
        ("missing in (x)", False),
        ("env notin (dev)", True),
        ("env notin (prod,dev)", False),
        ("missing notin (x)", True),
        ("env", True),
        ("missing", False),
        ("!missing", True),
        ("!env", False),
        ("empty", True),
        ("empty=", True),
        ("env=", False),
        ("env=prod,tier=web", True),
        ("env=prod,tier=db", False),
    ],
)
def test_matching_semantics(text, expected):
    assert matches(text, LABELS) is expected
    assert matches(parse_selector(text), LABELS) is expected


words = st.sampled_from(["a", "b", "c"])
label_sets = st.dictionaries(words, st.sampled_from(["x", "y", ""]), max_size=3)
requirements = st.one_of(
    st.builds(lambda k, v: Requirement(k, Op.EQUALS, frozenset({v})), words, st.sampled_from("xy")),
    st.builds(
        lambda k, v: Requirement(k, Op.NOT_EQUALS, frozenset({v})), words, st.sampled_from("xy")
    ),
    st.builds(
        lambda k, vs: Requirement(k, Op.IN, frozenset(vs)),
        words,
        st.sets(st.sampled_from("xy"), min_size=1),
    ),
    st.builds(
        lambda k, vs: Requirement(k, Op.NOT_IN, frozenset(vs)),
        words,
        st.sets(st.sampled_from("xy"), min_size=1),
    ),
    st.builds(lambda k: Requirement(k, Op.EXISTS), words),
    st.builds(lambda k: Requirement(k, Op.NOT_EXISTS), words),
)


def reference(requirement: Requirement, labels: dict) -> bool:
    present = requirement.key in labels
    value = labels.get(requirement.key)
    return {
        Op.EQUALS: present and value in requirement.values,
        Op.IN: present and value in requirement.values,
        Op.NOT_EQUALS: not present or value not in requirement.values,
        Op.NOT_IN: not present or value not in requirement.values,
        Op.EXISTS: present,
        Op.NOT_EXISTS: not present,
    }[requirement.op]


@given(st.lists(requirements, max_size=4), label_sets)
def test_text_round_trip_and_reference(reqs, labels):
    selector = Selector(tuple(reqs))
    parsed = parse_selector(str(selector))
    assert parsed == selector
    assert parsed.matches(labels) == all(reference(r, labels) for r in reqs)


@given(st.text(alphabet="ab=!,() innot\t", max_size=30))
def test_garbage_parses_or_raises_with_a_position_inside(text):
    try:
        parse_selector(text)
    except SelectorError as error:
        assert error.code == "invalid_selector"
        assert 0 <= error.position <= len(text)


# --- the registry ---------------------------------------------------------------------------


def test_registry_put_update_remove_select():
    registry: NodeRegistry[dict] = NodeRegistry()
    assert registry.put("plc-1", {"kind": "plc", "area.region": "eu"}, {"pid": 1})
    assert registry.put("cam.2", {"kind": "camera", "area.region": "us"}, {"pid": 2})
    assert registry.put("dash", {}, {"pid": 3})
    assert not registry.put("plc-1", {"kind": "plc", "area.region": "us"}, {"pid": 4})
    assert len(registry) == 3 and "plc-1" in registry
    assert registry.get("plc-1").record == {"pid": 4}
    names = lambda nodes: [n.name for n in nodes]  # noqa: E731
    assert names(registry.select("area.region=us")) == ["cam.2", "plc-1"]
    assert names(registry.select("kind in (plc,camera),area.region!=eu")) == ["cam.2", "plc-1"]
    assert names(registry.select("!kind")) == ["dash"]
    assert names(registry.select("")) == ["cam.2", "dash", "plc-1"]
    assert registry.remove("cam.2").labels["kind"] == "camera"
    assert registry.remove("cam.2") is None
    assert names(registry) == ["dash", "plc-1"]
    with pytest.raises(SelectorError) as caught:
        registry.select("kind in")
    assert caught.value.code == "invalid_selector"


def test_registry_labels_are_a_frozen_copy():
    registry: NodeRegistry[None] = NodeRegistry()
    labels = {"a": "1"}
    registry.put("n", labels, None)
    labels["a"] = "2"
    assert registry.get("n").labels["a"] == "1"
    with pytest.raises(TypeError):
        registry.get("n").labels["a"] = "3"  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "labels", "code"),
    [
        ("", {}, "invalid_node_name"),
        ("-x", {}, "invalid_node_name"),
        ("a b", {}, "invalid_node_name"),
        ("x" * 254, {}, "invalid_node_name"),
        ("n", {"bad key": "v"}, "invalid_label"),
        ("n", {"k": "bad value"}, "invalid_label"),
        ("n", {"k": 1}, "invalid_label"),
        ("n", {1: "v"}, "invalid_label"),
    ],
)
def test_registry_refuses_bad_records(name, labels, code):
    registry: NodeRegistry[None] = NodeRegistry()
    with pytest.raises(SelectorError) as caught:
        registry.put(name, labels, None)
    assert caught.value.code == code
    assert len(registry) == 0


def test_registry_bound():
    registry: NodeRegistry[None] = NodeRegistry(max_nodes=2)
    registry.put("a", {}, None)
    registry.put("b", {}, None)
    registry.put("b", {"k": "v"}, None)  # an update is not a new node
    with pytest.raises(SelectorError) as caught:
        registry.put("c", {}, None)
    assert caught.value.code == "too_many_nodes"
