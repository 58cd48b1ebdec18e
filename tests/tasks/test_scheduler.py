"""The scheduler with a real store and real threads: outcomes, retries, slots, recovery."""

from __future__ import annotations

import os
import random
import threading
import time

import numpy as np
import pytest
import trio

from appliance.kernels import Kernel, load_kernels
from appliance.kernels.params import schema
from appliance.store import Store
from appliance.tasks import RunQueue, Scheduler, SchedulerLimits, Task, TaskRepository, TaskState
from appliance.tasks.scheduler import BACKOFF_BASE_S, BACKOFF_MAX_S

REAL = load_kernels(None)


class Script:
    """Kernels whose behaviour a test scripts: fail, sleep, succeed (fakes of our own)."""

    def __init__(self) -> None:
        self.calls = 0
        self.thread_ends: list[float] = []
        self.failures: list[BaseException] = []
        self.sleep_s = 0.0

    def run(self, x: np.ndarray, params: dict) -> dict:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        time.sleep(self.sleep_s)
        self.thread_ends.append(time.time())
        return {"n": int(x.size)}


def scripted(name: str, script: Script) -> Kernel:
    return Kernel(
        name=name,
        summary="scripted for tests",
        params=schema({}),
        output={},
        run=script.run,
        example={"params": {}, "input": [1.0]},
    )


class NoJitter(random.Random):
    def uniform(self, low: float, high: float) -> float:
        return min(high, 0.01)


@pytest.fixture
def store(tmp_path):
    opened = Store.open(tmp_path / "store")
    yield opened
    opened.close()


def build(store, kernels, *, concurrency=1, max_queue=10, rng=None, kernel_nice=0):
    ready = trio.Event()
    ready.set()
    limits = SchedulerLimits(max_queue=max_queue, concurrency=concurrency, kernel_nice=kernel_nice)
    return Scheduler(
        TaskRepository(store), kernels, limits, kernels_ready=ready, rng=rng or NoJitter()
    )


async def submit(scheduler, kernel, data=(1.0, 2.0), **options):
    defaults = {
        "priority": 5,
        "timeout_s": 10.0,
        "max_retries": 2,
        "idempotency_key": None,
        "submitted_by": "test",
    }
    task, _ = await scheduler.submit(
        kernel, {}, np.asarray(data, dtype=np.float64), **{**defaults, **options}
    )
    return task


async def wait_finished(scheduler, task_id) -> Task:
    return await wait_until(scheduler, task_id, lambda task: task.finished)


async def wait_until(scheduler, task_id, predicate) -> Task:
    """Poll the store (the state of record) for a task; fail after 30 s."""
    with trio.fail_after(30):
        while True:
            task = scheduler.repository.get(task_id)
            if predicate(task):
                return task
            await trio.sleep(0.005)


async def test_success_stores_the_result(store):
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store)
        scheduler = nursery.scheduler
        task = await submit(scheduler, "rms", (3.0, 4.0, 3.0, 4.0))
        done = await wait_finished(scheduler, task.id)
        # The in-memory totals follow the store's record a step later.
        with trio.fail_after(10):
            while scheduler.status()["totals"]["succeeded"] != 1:  # noqa: ASYNC110
                await trio.sleep(0.005)
        nursery.cancel_scope.cancel()
    assert done.state is TaskState.SUCCEEDED and done.attempts == 1
    assert done.started_at <= done.finished_at
    assert scheduler.repository.result(task.id) == {"rms": pytest.approx(3.5355339)}
    assert scheduler.status()["totals"]["succeeded"] == 1


async def store_and_scheduler(nursery, store, kernels=None, **options):
    await nursery.start(store.serve)
    scheduler = build(store, kernels or REAL, **options)
    await nursery.start(scheduler.serve)
    nursery.scheduler = scheduler


async def test_retryable_failures_back_off_then_succeed(store):
    script = Script()
    script.failures = [OSError("disk hiccup"), MemoryError()]
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, {"flaky": scripted("flaky", script)})
        task = await submit(nursery.scheduler, "flaky", max_retries=2)
        done = await wait_finished(nursery.scheduler, task.id)
        nursery.cancel_scope.cancel()
    assert done.state is TaskState.SUCCEEDED
    assert done.attempts == 3 and script.calls == 3
    states = [h["state"] for h in done.history]
    assert states == ["running", "queued", "running", "queued", "running", "succeeded"]


async def test_retry_budget_runs_out(store):
    script = Script()
    script.failures = [OSError("1"), OSError("2")]
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, {"flaky": scripted("flaky", script)})
        task = await submit(nursery.scheduler, "flaky", max_retries=1)
        done = await wait_finished(nursery.scheduler, task.id)
        nursery.cancel_scope.cancel()
    assert done.state is TaskState.FAILED and done.attempts == 2
    assert done.error["code"] == "kernel_error" and "OSError: 2" in done.error["message"]


async def test_deterministic_errors_are_not_retried(store):
    script = Script()
    script.failures = [ValueError("bad window")]
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, {"boom": scripted("boom", script)})
        task = await submit(nursery.scheduler, "boom", max_retries=5)
        done = await wait_finished(nursery.scheduler, task.id)
        nursery.cancel_scope.cancel()
    assert done.state is TaskState.FAILED and done.attempts == 1 and script.calls == 1


async def test_timeout_keeps_the_slot_until_the_thread_ends(store):
    slow, quick = Script(), Script()
    slow.sleep_s = 0.5
    kernels = {"slow": scripted("slow", slow), "quick": scripted("quick", quick)}
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, kernels, concurrency=1)
        timed = await submit(nursery.scheduler, "slow", timeout_s=0.05)
        after = await submit(nursery.scheduler, "quick")
        timed_done = await wait_finished(nursery.scheduler, timed.id)
        assert timed_done.state is TaskState.TIMED_OUT
        assert timed_done.error["code"] == "timed_out"
        after_done = await wait_finished(nursery.scheduler, after.id)
        nursery.cancel_scope.cancel()
    assert after_done.state is TaskState.SUCCEEDED
    # One core's worth of slots: the next task started only once the abandoned thread ended.
    assert after_done.started_at >= slow.thread_ends[0]
    assert timed_done.finished_at < slow.thread_ends[0]


async def test_cancel_queued_and_running(store):
    slow = Script()
    slow.sleep_s = 0.3
    kernels = {"slow": scripted("slow", slow)}
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, kernels, concurrency=1)
        scheduler = nursery.scheduler
        running = await submit(scheduler, "slow")
        queued = await submit(scheduler, "slow")
        await wait_until(scheduler, running.id, lambda task: task.state is TaskState.RUNNING)
        cancelled_queued = await scheduler.cancel(scheduler.repository.get(queued.id))
        assert cancelled_queued.state is TaskState.CANCELLED
        cancelled_running = await scheduler.cancel(scheduler.repository.get(running.id))
        assert cancelled_running.state is TaskState.CANCELLED
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert slow.calls == 1  # the queued one never ran
    assert scheduler.status()["totals"]["cancelled"] == 2


async def test_priority_order_with_one_worker(store):
    order: list[str] = []
    lock = threading.Lock()

    def recorder(name):
        def run(x, params):
            with lock:
                order.append(name)
            return {}

        return Kernel(
            name=name,
            summary="",
            params=schema({}),
            output={},
            run=run,
            example={"params": {}, "input": [1.0]},
        )

    kernels = {name: recorder(name) for name in ("blocker", "low", "high", "mid")}
    blocker = Script()
    blocker.sleep_s = 0.2
    kernels["blocker"] = scripted("blocker", blocker)
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, kernels, concurrency=1)
        scheduler = nursery.scheduler
        first = await submit(scheduler, "blocker")
        await wait_until(scheduler, first.id, lambda task: task.state is TaskState.RUNNING)
        tasks = [
            await submit(scheduler, name, priority=priority)
            for name, priority in (("low", 1), ("high", 9), ("mid", 5))
        ]
        for task in tasks:
            await wait_finished(scheduler, task.id)
        nursery.cancel_scope.cancel()
    assert order == ["high", "mid", "low"]


async def test_idempotency_key_returns_the_existing_task(store):
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store)
        scheduler = nursery.scheduler
        first, created = await scheduler.submit(
            "rms",
            {},
            np.ones(3),
            priority=5,
            timeout_s=5,
            max_retries=0,
            idempotency_key="k-1",
            submitted_by="t",
        )
        again, created_again = await scheduler.submit(
            "rms",
            {},
            np.ones(9),
            priority=1,
            timeout_s=5,
            max_retries=0,
            idempotency_key="k-1",
            submitted_by="t",
        )
        nursery.cancel_scope.cancel()
    assert created and not created_again
    assert again.id == first.id
    assert len(scheduler.repository.all()) == 1


async def test_recovery_requeues_and_interrupts(store):
    repository = TaskRepository(store)
    kept = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        for name, retries, state in (
            ("queued", 0, TaskState.QUEUED),
            ("retry", 1, TaskState.RUNNING),
            ("give-up", 0, TaskState.RUNNING),
        ):
            task = Task(
                id=f"task-{name}",
                kernel="rms",
                params={},
                priority=5,
                timeout_s=5,
                max_retries=retries,
                created_at=time.time(),
            )
            if state is TaskState.RUNNING:
                task = task.moved(TaskState.RUNNING, attempts=1)
            await repository.add(task, np.array([3.0, 4.0]))
            kept[name] = task
        scheduler = build(store, REAL)
        await nursery.start(scheduler.serve)
        queued = await wait_finished(scheduler, "task-queued")
        retried = await wait_finished(scheduler, "task-retry")
        nursery.cancel_scope.cancel()
    gave_up = repository.get("task-give-up")
    assert queued.state is TaskState.SUCCEEDED
    assert retried.state is TaskState.SUCCEEDED and retried.attempts == 2
    assert [h["state"] for h in retried.history][-3:] == ["queued", "running", "succeeded"]
    assert gave_up.state is TaskState.FAILED and gave_up.error["code"] == "interrupted"


async def test_expired_results_are_removed(store):
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store)
        scheduler = nursery.scheduler
        task = await submit(scheduler, "rms", idempotency_key="will-expire")
        await wait_finished(scheduler, task.id)
        assert await scheduler.repository.delete_expired(older_than_s=3600) == []
        await trio.sleep(0.05)
        assert await scheduler.repository.delete_expired(older_than_s=0.01) == ["succeeded"]
        again = await submit(scheduler, "rms", idempotency_key="will-expire")
        nursery.cancel_scope.cancel()
    assert scheduler.repository.get(task.id) is None
    assert scheduler.repository.result(task.id) is None
    assert again.id != task.id  # the key was released with the task


def test_backoff_is_bounded_full_jitter(store):
    scheduler = build(store, REAL, rng=random.Random(1))
    for attempts in range(1, 12):
        ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempts - 1))
        delays = [scheduler._backoff(attempts) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # spread over the range, not stuck at one end


async def test_cancel_while_a_worker_waits_for_its_slot(store):
    """A timed-out kernel keeps its slot; the worker that took the next task waits for it.
    Cancelling that next task meanwhile must stick: it never runs."""
    slow, quick = Script(), Script()
    slow.sleep_s = 0.4
    kernels = {"slow": scripted("slow", slow), "quick": scripted("quick", quick)}
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, kernels, concurrency=1)
        scheduler = nursery.scheduler
        timed = await submit(scheduler, "slow", timeout_s=0.05)
        await wait_finished(scheduler, timed.id)  # timed out; its thread still sleeps
        waiting = await submit(scheduler, "quick")
        with trio.fail_after(10):
            while len(scheduler.queue):  # noqa: ASYNC110 - the worker has taken it
                await trio.sleep(0.001)
        assert scheduler.status()["busy_slots"] == 1
        cancelled = await scheduler.cancel(scheduler.repository.get(waiting.id))
        assert cancelled.state is TaskState.CANCELLED
        with trio.fail_after(10):
            while scheduler.status()["busy_slots"]:  # noqa: ASYNC110 - the thread ends
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert quick.calls == 0
    assert scheduler.repository.get(waiting.id).state is TaskState.CANCELLED


async def test_every_worker_takes_work(store):
    """Two workers, both idle on an empty queue: two tasks then run side by side."""
    slow = Script()
    slow.sleep_s = 0.3
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, {"slow": scripted("slow", slow)}, concurrency=2)
        await trio.sleep(0.05)  # both workers are waiting in queue.get()
        first, second = [await submit(nursery.scheduler, "slow") for _ in range(2)]
        first_done = await wait_finished(nursery.scheduler, first.id)
        second_done = await wait_finished(nursery.scheduler, second.id)
        nursery.cancel_scope.cancel()
    assert second_done.started_at < first_done.finished_at  # they overlapped


async def test_queue_wakes_every_waiter(autojump_clock):
    queue = RunQueue(capacity=10)
    got: list[str] = []

    async def take():
        got.append(await queue.get())

    with trio.fail_after(60):  # virtual time: a waiter left asleep fails at once
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(take)
            await trio.sleep(1)
            for name in ("a", "b", "c"):
                queue.put(name, 5)
    assert sorted(got) == ["a", "b", "c"]


async def test_until_finished_returns_when_the_task_ends(store):
    slow = Script()
    slow.sleep_s = 0.2
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, {"slow": scripted("slow", slow)})
        scheduler = nursery.scheduler
        task = await submit(scheduler, "slow")
        assert not scheduler.repository.get(task.id).finished
        with trio.fail_after(30):
            async with trio.open_nursery() as waiters:  # two waiters share one event
                for _ in range(2):
                    waiters.start_soon(scheduler.until_finished, task.id)
        # Woken by the commit that ended it: the store already says so.
        assert scheduler.repository.get(task.id).state is TaskState.SUCCEEDED
        assert scheduler._finish_waiters == {}
        nursery.cancel_scope.cancel()


async def test_abandoned_waits_leave_nothing_behind(store):
    slow = Script()
    slow.sleep_s = 0.3
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, {"slow": scripted("slow", slow)})
        scheduler = nursery.scheduler
        task = await submit(scheduler, "slow")
        with trio.move_on_after(0.01) as scope:
            await scheduler.until_finished(task.id)
        assert scope.cancelled_caught
        assert scheduler._finish_waiters == {}
        nursery.cancel_scope.cancel()


async def test_kernels_run_below_the_loop_priority(store):
    seen: list[tuple[int, int]] = []

    def run(x: np.ndarray, params: dict) -> dict:
        thread = threading.get_native_id()
        seen.append((thread, os.getpriority(os.PRIO_PROCESS, thread)))
        return {"n": int(x.size)}

    kernel = Kernel(
        name="probe",
        summary="",
        params=schema({}),
        output={},
        run=run,
        example={"params": {}, "input": [1.0]},
    )
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store, {"probe": kernel}, kernel_nice=7)
        task = await submit(nursery.scheduler, "probe")
        assert (await wait_finished(nursery.scheduler, task.id)).state is TaskState.SUCCEEDED
        nursery.cancel_scope.cancel()
    thread, nice = seen[0]
    assert nice == min(base + 7, 19)
    # The thread goes back to trio's cache at its old priority.
    assert os.getpriority(os.PRIO_PROCESS, thread) == base


async def test_tasks_run_the_warmed_specialisation_without_compiling(store):
    # Inputs come back from the store read-only; numba would compile a new specialisation
    # for them on the request path instead of using the one loaded at start-up.
    from appliance.kernels.stats import _rms

    REAL["rms"].warm()
    before = list(_rms.signatures)
    async with trio.open_nursery() as nursery:
        await store_and_scheduler(nursery, store)
        task = await submit(nursery.scheduler, "rms", (3.0, 4.0, 3.0, 4.0))
        done = await wait_finished(nursery.scheduler, task.id)
        nursery.cancel_scope.cancel()
    assert done.state is TaskState.SUCCEEDED
    assert list(_rms.signatures) == before
