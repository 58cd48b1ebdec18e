"""A kernel thread's nice value: raised for the block, restored after, per thread."""

from __future__ import annotations

import os
import resource
import threading

import trio

from appliance.tasks.priority import can_restore_priority, lowered_priority, restorable


def _inside_and_after(increment: int) -> tuple[int, int, int]:
    thread = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, thread)
    with lowered_priority(increment):
        inside = os.getpriority(os.PRIO_PROCESS, thread)
    return before, inside, os.getpriority(os.PRIO_PROCESS, thread)


async def test_raised_in_the_block_and_restored_after():
    before, inside, after = await trio.to_thread.run_sync(_inside_and_after, 5)
    assert inside == min(before + 5, 19)
    assert after == before


async def test_only_the_calling_thread_is_affected():
    main_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = []

    def probe() -> None:
        with lowered_priority(4):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            seen.append(os.getpriority(os.PRIO_PROCESS, main_thread))

    main_thread = threading.get_native_id()
    await trio.to_thread.run_sync(probe)
    assert seen == [min(main_before + 4, 19), main_before]


async def test_zero_changes_nothing():
    before, inside, after = await trio.to_thread.run_sync(_inside_and_after, 0)
    assert before == inside == after


def test_an_unprivileged_service_needs_rlimit_nice_20():
    assert restorable(0, 0, 0)  # root (CAP_SYS_NICE)
    assert not restorable(998, 0, 0)  # may raise its nice value but never lower it
    assert restorable(998, 0, 20)  # LimitNICE=+0: may go back down to nice 0
    assert not restorable(998, 0, 19)
    assert restorable(998, 5, 15)  # started at nice 5: back to 5 is enough
    assert restorable(998, 0, resource.RLIM_INFINITY)


def test_this_process_agrees_with_its_limits():
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    assert can_restore_priority() is restorable(os.geteuid(), nice, soft)
