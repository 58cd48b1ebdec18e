"""Hypothesis strategies for bus messages, derived from the field checks themselves, so
every kind and every field is covered and a new field needs no new strategy."""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

from hypothesis import strategies as st

from appliance.bus import messages as m
from appliance.bus.codec import encode_frame


def _text(check: m._Text) -> st.SearchStrategy[str]:
    if check.pattern is not None:
        base = st.from_regex(check.pattern, fullmatch=True)
        if check.low == 0:
            base = st.one_of(st.just(""), base)
    else:
        base = st.text(min_size=check.low, max_size=min(check.high, 40))
    return base.filter(lambda s: check.low <= len(s.encode("utf-8", "surrogatepass")) <= check.high)


@cache
def for_field(check: m._Field) -> st.SearchStrategy[Any]:
    if isinstance(check, m._Int):
        edges = st.sampled_from([check.low, check.high])
        return st.one_of(edges, st.integers(check.low, min(check.high, check.low + 10**6)))
    if isinstance(check, m._Bool):
        return st.booleans()
    if isinstance(check, m._Bytes):
        return st.binary(max_size=64)
    if isinstance(check, m._Choice):
        return st.sampled_from(check.choices)
    if isinstance(check, m._Text):
        return _text(check)
    if isinstance(check, m._TextMap):
        return st.dictionaries(_text(check.key), _text(check.value), max_size=3)
    if isinstance(check, m._List):
        items = st.lists(for_field(check.item), min_size=check.low, max_size=min(check.high, 3))
        if check.unique:
            items = st.lists(
                for_field(check.item), min_size=check.low, max_size=min(check.high, 3), unique=True
            )
        return items.map(tuple)
    if isinstance(check, m._Nested):
        return records(check.cls)
    raise TypeError(check)


@cache
def records(cls: type[m.Record]) -> st.SearchStrategy[Any]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, check, default in cls._specs:
        value = for_field(check)
        if default is not dataclasses.MISSING:
            value = st.one_of(st.just(default), value)
        fields[name] = value
    return st.fixed_dictionaries(fields).map(lambda kw: _build(cls, kw))


def _build(cls: type[m.Record], kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except m.InvalidMessage:  # a cross-field rule (ack offsets, packet end): repair
        if cls is m.Acknowledge:
            lo, hi = sorted((kwargs["acknowledge_offset"], kwargs["received_max_offset"]))
            return cls(**{**kwargs, "acknowledge_offset": lo, "received_max_offset": hi})
        if cls is m.Packet:
            return cls(**{**kwargs, "offset": 0})
        raise


bodies = st.sampled_from(sorted(m.KINDS)).flatmap(lambda kind: records(m.KINDS[kind]))
messages = st.builds(m.Message, bodies, st.one_of(st.just(m.Head()), records(m.Head)))
frames = messages.map(lambda message: encode_frame(message.to_wire()))
