"""A process that drives the slot manager until it is SIGKILLed (by the test, or itself).

    python -m tests.firmware.crash_child ROOT random ROUND SEED
        on_start, then random installs, trials, commits and rollbacks for ever;
        the test kills it after a random delay.
    python -m tests.firmware.crash_child ROOT script KILL_AT
        a fixed update script; SIGKILLs itself just before its KILL_AT-th file system
        step (fsync, write, rename, unlink, symlink, mkdir, rmdir); 0 runs to the end and
        prints how many steps there were.

After each operation returns it prints `ack OPERATION SEQ`: a state the caller was told
is written, which no kill may lose.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path

from firmware import GrubEnvFile, Phase, Refused, SlotManager
from tests.firmware.trees import install

_STEPS = 0


def kill_at(step: int) -> None:
    """Wrap the file system calls the slot manager uses so that call number `step` is
    never made: the process dies just before it."""

    def counted(function):
        def call(*args, **kwargs):
            global _STEPS
            _STEPS += 1
            if step == _STEPS:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return call

    for name in ("fsync", "write", "replace", "rename", "unlink", "symlink", "mkdir", "rmdir"):
        setattr(os, name, counted(getattr(os, name)))


def ack(manager: SlotManager, operation: str) -> None:
    print(f"ack {operation} {manager.state().seq}", flush=True)


def manager_for(root: Path) -> SlotManager:
    return SlotManager(root, boot_env=GrubEnvFile(root / "grubenv"))


def run_script(manager: SlotManager) -> None:
    manager.on_start()
    ack(manager, "start")
    install(manager, "1.1.0")
    manager.mark_pending("b", "1.1.0", tries=2)
    ack(manager, "pending")
    manager.on_start()
    ack(manager, "start")
    manager.commit()
    ack(manager, "commit")
    install(manager, "1.2.0")
    manager.mark_pending("a", "1.2.0", tries=1)
    ack(manager, "pending")
    manager.on_start()
    ack(manager, "start")
    manager.on_start()  # no tries left: back to b
    ack(manager, "start")
    install(manager, "1.3.0")
    manager.mark_pending("a", "1.3.0", tries=1)
    manager.on_start()
    manager.commit()
    ack(manager, "commit")
    manager.rollback("by hand")  # back to b, 1.3.0 denied
    ack(manager, "rollback")


def run_random(manager: SlotManager, round_number: int, rng: random.Random) -> None:
    manager.on_start()
    ack(manager, "start")
    for minor in range(10_000):
        state = manager.state()
        choice = rng.random()
        if state.phase is Phase.COMMITTED:
            if choice < 0.15 and state.previous_good is not None:
                manager.rollback("random rollback")
                ack(manager, "rollback")
                continue
            version = f"{round_number + 2}.{minor}.0"
            slot = install(manager, version)
            manager.mark_pending(slot, version, tries=rng.randint(1, 3))
            ack(manager, "pending")
        elif choice < 0.35:
            manager.commit()
            ack(manager, "commit")
        elif choice < 0.45:
            manager.rollback("random rollback")
            ack(manager, "rollback")
        else:
            manager.on_start()
            ack(manager, "start")


def main(argv: list[str]) -> None:
    root, mode = Path(argv[0]), argv[1]
    manager = manager_for(root)
    if mode == "script":
        step = int(argv[2])
        kill_at(step)
        run_script(manager)
        print(f"steps {_STEPS}", flush=True)
        return
    print("started", flush=True)
    try:
        run_random(manager, int(argv[2]), random.Random(int(argv[3])))
    except Refused as exc:  # a bug: every move above is legal in its phase
        print(f"refused {exc}", flush=True)
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
