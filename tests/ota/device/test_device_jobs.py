"""The install job's state table and how a restart settles a job, and the device policy's
version floor: pure functions, checked against tables of every case."""

from __future__ import annotations

import time

import pytest

from appliance.ota.jobs import (
    FINISHED,
    TRANSITIONS,
    BoxFacts,
    IllegalMove,
    JobState,
    advance,
    new_job,
    settle,
)
from appliance.ota.policy import DevicePolicy
from ota import ErrorCode, HeaderReader, OtaError, TrustRoot
from tests.ota import craft

S = JobState


def test_every_state_is_in_the_table_and_the_finished_ones_lead_nowhere():
    assert set(TRANSITIONS) == set(JobState)
    assert {S.COMMITTED, S.FAILED, S.ROLLED_BACK} == FINISHED
    for state, moves in TRANSITIONS.items():
        assert state not in moves
        if state not in FINISHED:
            assert S.FAILED in moves or S.ROLLED_BACK in moves, state


@pytest.mark.parametrize("start", list(JobState))
@pytest.mark.parametrize("target", list(JobState))
def test_advance_follows_the_table_exactly(start, target):
    job = new_job("j1", "1.0.0", at=1.0)
    job = type(job)(**{**job.__dict__, "state": start})
    if target in TRANSITIONS[start]:
        moved = advance(job, target, at=2.0, code="x")
        assert (moved.state, moved.updated_at, moved.code) == (target, 2.0, "x")
        assert moved.created_at == 1.0
    else:
        with pytest.raises(IllegalMove):
            advance(job, target)


def facts(phase="committed", current="1.0.0", pending=None, failed=None) -> BoxFacts:
    return BoxFacts(phase, current, pending, failed or {})


NEW = "1.1.0"
DENIED = {NEW: ("tries_exhausted", "every start of the version failed before commit")}
# (job state, what the slots say) -> (state after the restart, code), None: unchanged
SETTLE_TABLE = [
    (S.RECEIVING, facts(), (S.FAILED, "interrupted")),
    (S.VERIFYING, facts(), (S.FAILED, "interrupted")),
    (S.INSTALLING, facts(), (S.FAILED, "interrupted")),
    # killed after the marker, before the switch: nothing points at the new slot
    (S.INSTALLED, facts(), (S.FAILED, "interrupted")),
    # killed after the switch, before the job said so
    (S.INSTALLED, facts("trial", NEW, NEW), (S.TRIAL, None)),
    (S.REBOOTING, facts("trial", NEW, NEW), (S.TRIAL, None)),
    (S.TRIAL, facts("trial", NEW, NEW), None),
    (S.REBOOTING, facts("committed", NEW), (S.COMMITTED, None)),
    (S.TRIAL, facts("committed", NEW), (S.COMMITTED, None)),
    (S.REBOOTING, facts(failed=DENIED), (S.ROLLED_BACK, "tries_exhausted")),
    (S.TRIAL, facts(failed=DENIED), (S.ROLLED_BACK, "tries_exhausted")),
    (S.INSTALLED, facts(failed=DENIED), (S.ROLLED_BACK, "tries_exhausted")),
    # on trial, but another version than this job's: the switch of this job never happened
    (S.REBOOTING, facts("trial", "1.2.0", "1.2.0"), (S.FAILED, "interrupted")),
    (S.COMMITTED, facts(), None),
    (S.FAILED, facts(), None),
    (S.ROLLED_BACK, facts("committed", NEW), None),
]


@pytest.mark.parametrize(("state", "box", "expected"), SETTLE_TABLE)
def test_a_restart_settles_a_job_where_the_box_really_is(state, box, expected):
    job = new_job("j1", "1.0.0", at=1.0)
    job = type(job)(**{**job.__dict__, "state": state, "version": NEW})
    settled = settle(job, box, at=5.0)
    if expected is None:
        assert settled is None
    else:
        assert (settled.state, settled.code) == expected
        assert settled.updated_at == 5.0


def policy(**changes) -> DevicePolicy:
    fields = {
        "trust_root": craft.root(),
        "product": craft.PRODUCT,
        "hardware": craft.HARDWARE,
        "installed_version": "1.0.0",
        "floor": None,
        "denylist": frozenset(),
        "clock": float(craft.NOW),
        "time_high_water": 0,
        "max_bundle_size": 1 << 30,
    }
    fields.update(changes)
    return DevicePolicy(**fields)


def header(**doc):
    reader = HeaderReader()
    reader.feed(craft.make_bundle(craft.manifest_doc(**doc)))
    return reader.header


def test_the_floor_refuses_a_version_above_the_installed_one_but_not_above_it():
    """After a rollback from 2.0.0 the box runs 1.0.0 but 2.0.0 was committed once."""
    assert str(policy().check(header(version="1.5.0")).version) == "1.5.0"
    with pytest.raises(OtaError) as refused:
        policy(floor="2.0.0").check(header(version="1.5.0"))
    assert refused.value.code is ErrorCode.NOT_NEWER
    assert "floor" in refused.value.detail
    assert str(policy(floor="2.0.0").check(header(version="2.0.1")).version) == "2.0.1"


def test_expiry_is_judged_at_the_later_of_the_clock_and_the_high_water_mark():
    expires = craft.NOW + 30 * 86400
    unset_clock = policy(clock=0.0, time_high_water=expires)
    with pytest.raises(OtaError) as refused:
        unset_clock.check(header())
    assert refused.value.code is ErrorCode.EXPIRED
    assert policy(clock=0.0, time_high_water=craft.NOW).check(header())


def test_the_denylist_and_versions_that_are_not_semver():
    with pytest.raises(OtaError) as refused:
        policy(denylist=frozenset({"2.0.0", "factory-1"})).check(header())
    assert refused.value.code is ErrorCode.DENIED_VERSION
    # a factory version that is not semver sets no bar; a signed semver version is newer
    assert policy(installed_version="factory-1", floor="factory-1").check(header())


def test_a_policy_checks_signatures_before_anything_else():
    other = TrustRoot((craft.OUTSIDER.public,))
    with pytest.raises(OtaError) as refused:
        policy(trust_root=other, product="other", clock=time.time() * 10).check(header())
    assert refused.value.code is ErrorCode.UNKNOWN_KEY
