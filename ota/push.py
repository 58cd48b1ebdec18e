"""`ota push`: stream a bundle to boxes and follow each install to its end.

For each box (`--box URL`, repeatable):

1. `POST URL/api/v1/ota/bundles` with the file as `application/octet-stream`, read and
   sent 1 MiB at a time with its `Content-Length` (never read whole);
2. a problem document means the box refused the bundle: its `code` (`bad_signature`,
   `not_newer`, `ota_busy`...) is the box's result;
3. a 202 carries the job: `GET URL/api/v1/ota/jobs/{id}` every `poll` seconds until it is
   `committed`, `failed` or `rolled_back`. The box restarts on the way (exit 75 into the
   new slot), so connection errors and 5xx answers are waited out until `per_box_s`.

Several boxes run `parallel` at a time, in the order given. A **rollout stops** when more
than `max_failures` boxes have failed: boxes not started by then are `skipped` (those
already under way are followed to their end). Progress goes to stderr (one redrawn line on
a terminal, a line per change otherwise); `main` in `ota.cli` prints one result line per
box and exits 0 when every box committed, 1 otherwise.

Concurrency is trio's: one task per box in a nursery, a `CapacityLimiter` for `parallel`,
every wait bounded by `per_box_s`. httpx is the HTTP client (over trio through anyio).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import trio

__all__ = ["BoxResult", "Progress", "push_bundle"]

CHUNK = 1 << 20
BUNDLES = "/api/v1/ota/bundles"
JOBS = "/api/v1/ota/jobs/"
FINISHED = ("committed", "failed", "rolled_back")


@dataclass(frozen=True)
class BoxResult:
    box: str
    outcome: str  # committed | failed | rolled_back | refused | unreachable | timeout | skipped
    code: str | None = None
    detail: str | None = None
    job: str | None = None
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "committed"

    def line(self) -> str:
        head = f"{'ok' if self.ok else 'FAILED':<7}{self.box}  {self.outcome}"
        if self.version:
            head += f" {self.version}"
        if self.code:
            head += f": {self.code}"
        if self.detail:
            head += f": {self.detail}"
        if self.job:
            head += f" (job {self.job})"
        return head


class Progress:
    """Each box's progress on `stream`: a redrawn line on a terminal, else a line per
    change (uploads in steps of 25 %)."""

    def __init__(self, stream: TextIO, boxes: Sequence[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.states = dict.fromkeys(boxes, "waiting")

    def update(self, box: str, state: str) -> None:
        if self.states.get(box) == state:
            return
        self.states[box] = state
        if self.tty:
            width = os.get_terminal_size(self.stream.fileno()).columns - 1
            text = " | ".join(f"{name}: {value}" for name, value in self.states.items())
            self.stream.write("\r" + text[:width].ljust(width))
        else:
            self.stream.write(f"{box}: {state}\n")
        self.stream.flush()

    def uploaded(self, box: str, sent: int, total: int) -> None:
        percent = 100 * sent // total if total else 100
        if not self.tty:
            percent -= percent % 25
        self.update(box, f"uploading {percent}%")

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def _file_chunks(path: Path, size: int, on_sent: Any) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as stream:
        sent = 0
        while chunk := await stream.read(CHUNK):
            sent += len(chunk)
            yield chunk
            on_sent(min(sent, size))


def _problem(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        return str(body.get("code") or f"http_{response.status_code}"), str(body.get("detail"))
    except ValueError:
        return f"http_{response.status_code}", response.text[:200]


async def _upload(
    client: httpx.AsyncClient, box: str, path: Path, size: int, progress: Progress
) -> BoxResult | dict[str, Any]:
    try:
        response = await client.post(
            box.rstrip("/") + BUNDLES,
            content=_file_chunks(path, size, lambda sent: progress.uploaded(box, sent, size)),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
    except httpx.HTTPError as exc:
        return BoxResult(box, "unreachable", "upload_failed", f"{type(exc).__name__}: {exc}")
    if response.status_code != 202:
        code, detail = _problem(response)
        job = None
        try:
            job = (response.json().get("job") or {}).get("id")
        except (ValueError, AttributeError):
            pass
        return BoxResult(box, "refused", code, detail, job)
    return response.json()


async def _follow(
    client: httpx.AsyncClient, box: str, job: dict[str, Any], progress: Progress, poll: float
) -> BoxResult:
    url = box.rstrip("/") + JOBS + job["id"]
    while True:
        state = job["state"]
        detail = state
        if state == "installing" and job["progress"]["fraction"] is not None:
            detail = f"installing {math.floor(100 * job['progress']['fraction'])}%"
        progress.update(box, detail)
        if state in FINISHED:
            return BoxResult(
                box, state, job.get("code"), job.get("detail"), job["id"], job.get("version")
            )
        await trio.sleep(poll)
        try:
            response = await client.get(url)
        except httpx.HTTPError:
            progress.update(box, f"{state} (box unreachable, restarting?)")
            continue
        if response.status_code >= 500:
            progress.update(box, f"{state} (box answers {response.status_code})")
            continue
        if response.status_code != 200:
            code, text = _problem(response)
            return BoxResult(box, "failed", code, text, job["id"], job.get("version"))
        job = response.json()


async def _push_one(
    client: httpx.AsyncClient,
    box: str,
    path: Path,
    size: int,
    progress: Progress,
    poll: float,
    per_box_s: float,
) -> BoxResult:
    with trio.move_on_after(per_box_s):
        uploaded = await _upload(client, box, path, size, progress)
        if isinstance(uploaded, BoxResult):
            progress.update(box, f"refused: {uploaded.code}")
            return uploaded
        return await _follow(client, box, uploaded, progress, poll)
    return BoxResult(box, "timeout", "timeout", f"no end after {per_box_s:g} s")


async def push_bundle(
    path: Path,
    boxes: Sequence[str],
    token: str,
    *,
    parallel: int = 1,
    max_failures: int = 0,
    per_box_s: float = 900.0,
    poll: float = 0.5,
    progress: Progress | None = None,
    verify: bool | str = True,
) -> list[BoxResult]:
    """Push `path` to every box (module docstring); one result per box, in `boxes`' order."""
    progress = progress or Progress(sys.stderr, boxes)
    size = (await trio.Path(path).stat()).st_size
    results: dict[str, BoxResult] = {}
    failures = 0
    limiter = trio.CapacityLimiter(parallel)
    client = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(60.0, connect=10.0),
        verify=verify,
    )

    async def run(box: str) -> None:
        nonlocal failures
        try:
            result = await _push_one(client, box, path, size, progress, poll, per_box_s)
        finally:
            limiter.release_on_behalf_of(box)
        results[box] = result
        if not result.ok:
            failures += 1

    async with client, trio.open_nursery() as nursery:
        for box in boxes:
            await limiter.acquire_on_behalf_of(box)
            if failures > max_failures:
                limiter.release_on_behalf_of(box)
                break
            nursery.start_soon(run, box)
    progress.close()
    for box in boxes:
        if box not in results:
            results[box] = BoxResult(
                box, "skipped", "rollout_stopped", f"more than {max_failures} boxes failed"
            )
    return [results[box] for box in boxes]
