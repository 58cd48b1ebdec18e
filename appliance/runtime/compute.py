"""Starting the compute side: the kernel library, its warm-up, and the task scheduler."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import trio

from appliance.api.metrics import Metrics
from appliance.kernels import Kernel, load_kernels, release_compiler_pages, warm_all
from appliance.runtime.health import Health
from appliance.runtime.sdnotify import Notifier
from appliance.settings import Settings
from appliance.store import Store
from appliance.tasks import Scheduler, SchedulerLimits, TaskRepository
from appliance.tasks.priority import can_restore_priority

log = logging.getLogger(__name__)


def kernel_cache_dir(settings: Settings) -> Path:
    return settings.data_dir / "cache" / "numba"


async def warm_kernels(
    kernels: dict[str, Kernel],
    health: Health,
    notifier: Notifier,
    ready: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Compile (or load from numba's cache) every kernel in a worker thread; /health shows
    `kernels: starting` and STATUS= the progress until it is done. Then the same thread
    gives back the memory only the loading needed (LLVM's code pages, the heap's tail)."""
    total = len(kernels)
    health.set("kernels", "starting", f"0/{total} compiled")
    task_status.started()
    started = time.monotonic()

    def progress(done: int, total: int, name: str) -> None:
        trio.from_thread.run_sync(_report, done, total, name)

    def _report(done: int, total: int, name: str) -> None:
        health.set("kernels", "starting", f"{done}/{total} compiled (last: {name})")
        notifier.notify(STATUS=f"compiling kernels: {done}/{total}")

    def load() -> int:
        warm_all(kernels, progress)
        return release_compiler_pages()

    # Abandoned on stop: a SIGTERM during a cold compile must not wait for the compiler
    # (it would outlast TimeoutStopSec); numba writes each cache file whole or not at all.
    released_kib = await trio.to_thread.run_sync(load, abandon_on_cancel=True)
    elapsed = time.monotonic() - started
    health.set("kernels", "ok", f"{total} kernels ready ({elapsed:.1f} s to load)")
    log.info(
        "%d kernels ready in %.1f s (%.0f MiB of compiler pages released)",
        total,
        elapsed,
        released_kib / 1024,
    )
    ready.set()


def build_scheduler(
    settings: Settings,
    store: Store,
    kernels: dict[str, Kernel],
    metrics: Metrics,
    ready: trio.Event,
) -> Scheduler:
    tasks = settings.tasks
    limits = SchedulerLimits(
        max_queue=tasks.max_queue,
        concurrency=tasks.concurrency,
        result_ttl_s=tasks.result_ttl_s,
        kernel_nice=tasks.kernel_nice if can_restore_priority() else 0,
    )
    if tasks.kernel_nice and not limits.kernel_nice:
        log.warning(
            "kernels run at the event loop's priority: lowering a thread's priority back "
            "needs CAP_SYS_NICE or LimitNICE=+0 (RLIMIT_NICE >= 20)"
        )

    def observe(kernel: str, outcome: str, seconds: float) -> None:
        metrics.task_runs.labels(kernel, outcome).inc()
        metrics.task_seconds.labels(kernel).observe(seconds)

    scheduler = Scheduler(
        TaskRepository(store), kernels, limits, kernels_ready=ready, observe=observe
    )
    metrics.gauges(
        lambda: {
            "appliance_task_queue_depth": ("Tasks waiting to run", len(scheduler.queue)),
            "appliance_tasks_running": ("Tasks running now", scheduler.status()["running"]),
        }
    )
    return scheduler


def load_kernel_library(settings: Settings) -> dict[str, Kernel]:
    return load_kernels(kernel_cache_dir(settings))
