"""Nothing acknowledged is lost: SIGKILL a writing process at random moments, then check."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.store import Store, pack_key

ROUNDS = 20
CHILD = Path(__file__).with_name("durability_child.py")


def run_until_killed(path: Path, round_number: int, rng: random.Random) -> list[tuple[int, int]]:
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(round_number)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    first = child.stdout.readline()
    assert first == b"started\n", child.stderr.read().decode() if child.stderr else first
    time.sleep(rng.uniform(0.05, 0.6))
    child.send_signal(signal.SIGKILL)
    output, errors = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, errors.decode()
    acknowledged = []
    for line in output.decode().splitlines():
        parts = line.split()
        if len(parts) == 2:  # the very last line may be cut off mid-write: not acknowledged
            acknowledged.append((int(parts[0]), int(parts[1])))
    return acknowledged


def test_acknowledged_writes_survive_sigkill(tmp_path):
    rng = random.Random(20261123)
    path = tmp_path / "store"
    total = 0
    for round_number in range(ROUNDS):
        acknowledged = run_until_killed(path, round_number, rng)
        total += len(acknowledged)
        store = Store.open(path)  # must open cleanly after every kill
        try:
            missing = [
                (w, n)
                for w, n in acknowledged
                if store.get("kv", pack_key(round_number, w, n)) != {"n": n}
            ]
            assert not missing, f"round {round_number}: lost acknowledged writes {missing[:5]}"
            # Every writer's keys form a gap-free run: writes are acknowledged in order.
            for w in {w for w, _ in acknowledged}:
                stored = [k for k, _ in store.scan("kv", pack_key(round_number, w))]
                assert stored == [pack_key(round_number, w, n) for n in range(len(stored))]
        finally:
            store.close()
    assert total > ROUNDS * 10, "the child wrote almost nothing: the test proves little"
