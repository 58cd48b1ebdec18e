"""Kernel threads run at a lower CPU priority than the event loop.

With every core in a kernel, an event loop at the same priority gets only its fair share
of a core and every request waits in line behind the kernels. Linux keeps a nice value
per thread, so a kernel thread raises its own nice value for the length of one kernel run
(`setpriority(PRIO_PROCESS, tid, ...)`) and the loop, the store writer and the clients
keep theirs. The thread comes from trio's thread cache and will be reused for other work,
so the old value is put back afterwards; lowering a nice value again needs CAP_SYS_NICE or
an RLIMIT_NICE that allows it (the unit sets `LimitNICE=+0`). Where neither holds, kernels
keep the default priority rather than leave a slow thread behind in the cache.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def can_restore_priority() -> bool:
    """Whether a thread that raised its nice value may lower it back to the current one."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NICE)
    return restorable(os.geteuid(), os.getpriority(os.PRIO_PROCESS, 0), soft)


def restorable(euid: int, nice: int, rlimit_nice: int) -> bool:
    """Root may; anyone else down to nice 20 - RLIMIT_NICE (see setpriority(2))."""
    return euid == 0 or rlimit_nice == resource.RLIM_INFINITY or 20 - rlimit_nice <= nice


@contextmanager
def lowered_priority(increment: int) -> Iterator[None]:
    """Run the block with this thread's nice value raised by `increment` (0: unchanged)."""
    if increment <= 0:
        yield
        return
    thread = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, thread)
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(before + increment, 19))
    except OSError as exc:  # e.g. a seccomp filter that denies setpriority: run as we are
        _warn_once(f"kernel threads run at the loop's priority: setpriority failed: {exc}")
        yield
        return
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, thread, before)
        except OSError as exc:  # checked at start-up, so only if the limit changed since
            log.warning("cannot restore a kernel thread's priority: %s", exc)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)
