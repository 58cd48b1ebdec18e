"""A replica's follower of another appliance: long-polls its feed and applies it here.

    GET {upstream}/api/v1/config/log?after=<our revision>&wait=<poll_wait_s>&limit=<n>
    Authorization: Bearer <upstream_token>            (a token of the upstream's replica role)

Each non-empty page is applied in one transaction with the revision
(`ConfigService.apply`), so a replica killed at any moment restarts at a revision boundary
and resumes from its head. A 410 `revision_compacted` makes it install the upstream's
snapshot. Everything else that goes wrong (unreachable, refused, garbage, an entry out of
order or with a bad checksum) is recorded in `config.follower` and retried later from the
last revision applied, with the waits of `upstream.RETRY`; the store keeps serving reads
meanwhile. The decisions are in `upstream.py` (sans-IO); this module moves the bytes.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import httpx
import trio

from appliance.config.errors import FeedError
from appliance.config.service import ConfigService, FollowerStatus
from appliance.config.upstream import (
    Compacted,
    Failure,
    Follower,
    Link,
    Page,
    check_page,
    read_log,
    read_snapshot,
)
from appliance.store import StoreError

log = logging.getLogger("appliance.config.replica")

MiB = 1 << 20
PAGE_LIMIT = 500  # entries asked for per request (the upstream allows up to 1,000)
GRACE_S = 10.0  # how much longer than the long poll an answer may take
SNAPSHOT_TIMEOUT_S = 120.0
SNAPSHOT_MAX_BYTES = 512 * MiB


@dataclass(frozen=True)
class Upstream:
    """Where and how to follow: the hub's base URL, our token there, and the limits."""

    url: str
    token: str
    poll_wait_s: float
    max_content_bytes: int

    @property
    def page_max_bytes(self) -> int:
        # One entry holds at most max_content_bytes of content, which JSON escaping can
        # blow up to 6x (control characters as \\u00XX); a page of many small ones is
        # allowed 32 MiB. A page above this is asked again with fewer entries.
        return max(32 * MiB, 8 * self.max_content_bytes + MiB)


class _Oversized(Exception):
    pass


async def follow_appliance(
    config: ConfigService,
    upstream: Upstream,
    *,
    rng: random.Random | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow `upstream` into `config` until cancelled. Ready at once: a replica serves
    what its store holds whether or not the upstream answers."""
    status = FollowerStatus(upstream=upstream.url, kind="appliance")
    status.extra["link"] = Link.STARTING.value
    config.follower = status
    async with httpx.AsyncClient(
        base_url=upstream.url.rstrip("/"),
        headers={"Authorization": f"Bearer {upstream.token}", "Accept": "application/json"},
        timeout=None,  # every request runs under a cancel scope of its own
        follow_redirects=False,
        transport=transport,
    ) as client:
        task_status.started()
        log.info(
            "config: replica of %s from revision %d",
            upstream.url,
            config.repository.head()["revision"],
        )
        await _Replica(config, upstream, client, status, Follower(rng)).run()


class _Replica:
    def __init__(
        self,
        config: ConfigService,
        upstream: Upstream,
        client: httpx.AsyncClient,
        status: FollowerStatus,
        follower: Follower,
    ) -> None:
        self.config = config
        self.upstream = upstream
        self.client = client
        self.status = status
        self.follower = follower
        self.limit = PAGE_LIMIT

    async def run(self) -> None:
        while True:
            outcome = await self._round()
            if outcome is None:  # asked again at once (a smaller page)
                continue
            if isinstance(outcome, Failure):
                step = self.follower.failed(outcome)
                self._failed(outcome, step.news, step.delay)
            else:
                step = self.follower.succeeded()
                self._succeeded(outcome, step.news)
            self.status.extra["link"] = step.link.value
            if step.delay > 0:
                self.status.extra["retry_at"] = round(time.time() + step.delay, 3)
                await trio.sleep(step.delay)
            self.status.extra.pop("retry_at", None)

    async def _round(self) -> int | Failure | None:
        """One exchange: the upstream revision we know of after it, a failure, or None
        to go again at once."""
        after = self.config.repository.head()["revision"]
        params = {"after": after, "wait": f"{self.upstream.poll_wait_s:g}", "limit": self.limit}
        try:
            answer = await self._get(
                "/api/v1/config/log",
                params,
                self.upstream.page_max_bytes,
                self.upstream.poll_wait_s + GRACE_S,
            )
        except _Oversized:
            if self.limit > 1:
                self.limit = max(1, self.limit // 4)
                log.debug("feed page too large; asking for %d entries at a time", self.limit)
                return None
            return Failure(
                Link.FAULTY,
                "upstream_oversized",
                f"one feed entry after revision {after} is larger than "
                f"{self.upstream.page_max_bytes} bytes",
            )
        if isinstance(answer, Failure):
            return answer
        outcome = read_log(*answer)
        if isinstance(outcome, Compacted):
            return await self._install_snapshot(after)
        if isinstance(outcome, Failure):
            return outcome
        return await self._apply(outcome, after)

    async def _apply(self, page: Page, after: int) -> int | Failure:
        wrong = check_page(page, after)
        if wrong is not None:
            return wrong
        if page.entries:
            try:
                await self.config.apply(list(page.entries))
            except FeedError as exc:  # nothing was applied
                return Failure(
                    Link.FAULTY,
                    exc.code,
                    f"{exc.message} (nothing applied; staying at revision {after})",
                    upstream_revision=page.upstream_revision,
                )
            except StoreError as exc:
                return Failure(Link.FAULTY, "store_error", f"cannot apply the feed here: {exc}")
            self.limit = min(PAGE_LIMIT, self.limit * 2)
        return page.upstream_revision

    async def _install_snapshot(self, after: int) -> int | Failure:
        try:
            answer = await self._get(
                "/api/v1/config/snapshot", {}, SNAPSHOT_MAX_BYTES, SNAPSHOT_TIMEOUT_S
            )
        except _Oversized:
            return Failure(
                Link.FAULTY,
                "upstream_oversized",
                f"the upstream's snapshot is larger than {SNAPSHOT_MAX_BYTES} bytes",
            )
        if isinstance(answer, Failure):
            return answer
        snapshot = read_snapshot(*answer)
        if isinstance(snapshot, Failure):
            return snapshot
        if snapshot["revision"] < after:
            return Failure(
                Link.FAULTY,
                "upstream_behind",
                f"the upstream's snapshot is at revision {snapshot['revision']}, behind "
                f"this replica's {after} (keeping revision {after})",
                upstream_revision=snapshot["revision"],
            )
        try:
            revision = await self.config.install_snapshot(snapshot)
        except FeedError as exc:
            return Failure(Link.FAULTY, exc.code, f"{exc.message} (nothing installed)")
        except StoreError as exc:
            return Failure(Link.FAULTY, "store_error", f"cannot install the snapshot: {exc}")
        log.info(
            "config: the upstream compacted revision %d away; installed its snapshot at "
            "revision %d",
            after,
            revision,
        )
        return revision

    async def _get(
        self, path: str, params: dict, max_bytes: int, deadline_s: float
    ) -> tuple[int, bytes, dict[str, str]] | Failure:
        """Status, body and headers of one GET, read up to `max_bytes` (_Oversized past
        that), within `deadline_s`; a Failure when the upstream cannot be reached."""
        with trio.move_on_after(deadline_s):
            try:
                async with self.client.stream("GET", path, params=params) as response:
                    length = response.headers.get("content-length", "")
                    if length.isdigit() and int(length) > max_bytes:
                        raise _Oversized
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise _Oversized
                    headers = {k.lower(): v for k, v in response.headers.items()}
                    return response.status_code, bytes(body), headers
            except httpx.HTTPError as exc:
                reason = str(exc) or type(exc).__name__
                return Failure(
                    Link.OFFLINE, "upstream_unreachable", f"{self.upstream.url}: {reason}"
                )
        return Failure(
            Link.OFFLINE,
            "upstream_unreachable",
            f"{self.upstream.url}: no answer in {deadline_s:g} s",
        )

    def _succeeded(self, upstream_revision: int, news: bool) -> None:
        status = self.status
        status.connected = True
        status.error = None
        status.upstream_revision = upstream_revision
        status.last_sync = time.time()
        if news:
            log.info(
                "config: connected to %s (revision %d, upstream at %d)",
                self.upstream.url,
                self.config.repository.head()["revision"],
                upstream_revision,
            )

    def _failed(self, failure: Failure, news: bool, delay: float) -> None:
        status = self.status
        status.connected = False
        status.error = failure.record(time.time())
        if failure.upstream_revision is not None:
            status.upstream_revision = failure.upstream_revision
        if news:
            level = logging.WARNING if failure.link is Link.OFFLINE else logging.ERROR
            log.log(
                level,
                "config: upstream %s: %s (%s); serving revision %d, retrying with backoff",
                failure.link.value,
                failure.message,
                failure.code,
                self.config.repository.head()["revision"],
            )
