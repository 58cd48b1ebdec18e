"""The boot state machine without files: the table, the invariants, every move."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware import BadArgument, BootState, Phase, Refused, StartAction
from firmware import transitions as t
from firmware.state import MAX_FAILED, FailedVersion

INSTALLED = {"a": "1.0.0", "b": "1.1.0"}
COMMITTED = BootState(current="a", good="a", versions={"a": "1.0.0", "b": None})
TRIAL = BootState(
    current="b", good="a", pending="b", tries_left=2, versions={"a": "1.0.0", "b": "1.1.0"}
)


def test_every_phase_and_event_is_either_a_transition_or_a_refusal():
    for phase, event in itertools.product(Phase, t.Event):
        assert ((phase, event) in t.TRANSITIONS) != ((phase, event) in t.REFUSALS), (
            phase,
            event,
        )


@pytest.mark.parametrize(
    "fields",
    [
        {"current": "a"},  # no good
        {"current": "a", "good": "b", "versions": {"a": "1", "b": "2"}},  # good != current
        {"current": "a", "good": "a", "pending": "b", "versions": {"a": "1", "b": "2"}},
        {"current": "a", "good": "a", "versions": {"a": None, "b": None}},  # no version
        {"current": "a", "good": "a", "tries_left": 1, "versions": {"a": "1", "b": None}},
        {"current": "a", "good": "a", "previous_good": "a", "versions": {"a": "1", "b": None}},
        {"current": "c", "good": "c"},
        {"seq": -1},
        {"versions": {"a": None}},
    ],
)
def test_states_that_make_no_sense_cannot_be_built(fields):
    with pytest.raises((ValueError, BadArgument)):
        BootState(**fields)


def test_a_full_cycle_through_the_pure_functions():
    state = t.begin_install(BootState(), "a")
    state = t.finish_install(state, "a", "1.0.0")
    state = t.adopt(state, "a", "1.0.0", {"a": "1.0.0", "b": None})
    assert state.phase is Phase.COMMITTED
    state = t.begin_install(state, "b")
    state = t.finish_install(state, "b", "1.1.0")
    state = t.mark_pending(state, "b", "1.1.0", 2, INSTALLED)
    assert (state.phase, state.current, state.good, state.tries_left) == (Phase.TRIAL, "b", "a", 2)
    decision = t.decide_start(state, running="b", installed=INSTALLED, at=5)
    assert (decision.action, decision.state.tries_left) == (StartAction.TRIAL, 1)
    state = t.commit(decision.state, INSTALLED)
    assert (state.phase, state.good, state.previous_good) == (Phase.COMMITTED, "b", "a")


def test_start_uses_tries_then_rolls_back():
    state = TRIAL
    actions = []
    for at in range(4):
        decision = t.decide_start(state, running="b", installed=INSTALLED, at=at)
        actions.append((decision.action, decision.state.tries_left))
        state = decision.state
    assert actions == [
        (StartAction.TRIAL, 1),
        (StartAction.TRIAL, 0),
        (StartAction.RESTART, 0),  # rolled back: b is no longer current
        (StartAction.RESTART, 0),  # a process from b is told to restart, no more moves
    ]
    assert (state.current, state.good, state.pending) == ("a", "a", None)
    assert [(f.version, f.cause, f.at) for f in state.failed] == [("1.1.0", "tries_exhausted", 2)]


def test_the_failed_list_keeps_the_newest():
    failures = tuple(FailedVersion(f"0.{n}.0", "b", "manual", "x", n) for n in range(MAX_FAILED))
    state = dataclasses.replace(TRIAL, failed=failures)
    after = t.rollback(state, cause="manual", detail="y", at=99, installed=INSTALLED)
    assert len(after.failed) == MAX_FAILED
    assert after.failed[0].version == "0.1.0" and after.failed[-1].version == "1.1.0"


@pytest.mark.parametrize(
    ("state", "move", "code"),
    [
        (BootState(), lambda s: t.commit(s, {}), "not_initialized"),
        (
            BootState(),
            lambda s: t.rollback(s, cause="manual", detail="", at=0, installed={}),
            "not_initialized",
        ),
        (
            BootState(),
            lambda s: t.decide_start(s, running=None, installed={}, at=0),
            "not_initialized",
        ),
        (COMMITTED, lambda s: t.commit(s, INSTALLED), "no_pending"),
        (COMMITTED, lambda s: t.adopt(s, "b", "1.1.0", INSTALLED), "already_initialized"),
        (COMMITTED, lambda s: t.begin_install(s, "a"), "slot_in_use"),
        (TRIAL, lambda s: t.begin_install(s, "a"), "update_pending"),
        (TRIAL, lambda s: t.mark_pending(s, "a", "1.0.0", 1, INSTALLED), "update_pending"),
        (
            COMMITTED,
            lambda s: t.mark_pending(s, "b", "1.1.0", 1, {"a": "1.0.0", "b": None}),
            "slot_incomplete",
        ),
        # the slot on trial lost its completion marker (or it names another version)
        (TRIAL, lambda s: t.commit(s, {"a": "1.0.0", "b": None}), "slot_incomplete"),
        (TRIAL, lambda s: t.commit(s, {"a": "1.0.0", "b": "1.2.0"}), "slot_incomplete"),
        # a manual rollback never makes a slot current that is not complete
        (
            TRIAL,
            lambda s: t.rollback(
                s, cause="manual", detail="", at=0, installed={"a": None, "b": "1.1.0"}
            ),
            "slot_incomplete",
        ),
    ],
)
def test_illegal_moves_are_refused_with_their_code(state, move, code):
    with pytest.raises(Refused) as refused:
        move(state)
    assert refused.value.code == code


slots = st.sampled_from(["a", "b"])
versions = st.from_regex(r"[0-9][0-9a-z.]{0,8}", fullmatch=True)


@st.composite
def states(draw):
    current = draw(slots)
    other = "b" if current == "a" else "a"
    trial = draw(st.booleans())
    version_map = {current: draw(versions), other: draw(st.one_of(st.none(), versions))}
    if trial:
        version_map[other] = draw(versions)
        return BootState(
            current=current,
            good=other,
            pending=current,
            tries_left=draw(st.integers(0, 5)),
            versions=version_map,
        )
    previous = other if version_map[other] is not None and draw(st.booleans()) else None
    return BootState(current=current, good=current, previous_good=previous, versions=version_map)


@settings(deadline=None)
@given(states(), st.sampled_from(list(t.Event)), slots)
def test_every_move_lands_in_a_phase_the_table_allows(state, event, slot):
    installed = dict(state.versions)
    moves = {
        t.Event.INSTALL: lambda: t.begin_install(state, slot),
        t.Event.ADOPT: lambda: t.adopt(state, slot, "9.9.9", installed),
        t.Event.MARK_PENDING: lambda: t.mark_pending(
            state, slot, installed[slot] or "9.9.9", 3, installed
        ),
        t.Event.START: lambda: t.decide_start(state, running=None, installed=installed, at=1).state,
        t.Event.COMMIT: lambda: t.commit(state, installed),
        t.Event.ROLLBACK: lambda: t.rollback(
            state, cause="manual", detail="", at=1, installed=installed
        ),
    }
    try:
        after = moves[event]()
    except Refused:
        return
    assert after.phase in t.TRANSITIONS[state.phase, event]
    if after.current is not None:
        assert after.versions[after.current] is not None
