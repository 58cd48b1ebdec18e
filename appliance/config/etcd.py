"""An etcd v3 cluster as the config's upstream: following it (and, re-exported from
etcd_publish.py for the CLI, publishing into it).

`follow_etcd` runs in the runtime's nursery on a replica whose `config.upstream_kind` is
`etcd`. The layout and the meaning of keys and events are in etcd_layout.py, the JSON
gateway's wire format in etcd_gateway.py; this module only moves bytes and decides when.

How the follower maps etcd revisions to ours: our revisions go up by one per applied
change, as on any replica. Next to them the store keeps (config_meta `etcd`) the etcd
revision everything up to which has been applied, the revision of ours it corresponds to,
the prefix and etcd's cluster id. At start, that record is trusted only if it names our
current revision, our prefix and (once etcd answers) the same cluster that has not gone
back in time; then the watch resumes after it. Otherwise — first start, a crash between
applying and recording, another prefix, a reset cluster, compaction past our place, or a
bad record met earlier — the follower lists the prefix and installs it as a snapshot at
our next revision, unless it equals what the store holds already. See docs/config.md.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import httpx
import trio

from appliance.config.errors import ConfigError
from appliance.config.etcd_gateway import (
    EtcdCompacted,
    EtcdError,
    EtcdUnreachable,
    KeyValue,
    WatchMessage,
    WatchReader,
    prefix_end,
    range_request,
    read_error,
    read_range,
    watch_request,
)
from appliance.config.etcd_layout import (
    check_prefix,
    entries_of,
    max_value_bytes,
    same_keys,
    snapshot_keys,
)
from appliance.config.etcd_publish import check_url, publish_rules, publish_version
from appliance.config.keys import parse_key
from appliance.config.service import ConfigService, FollowerStatus
from appliance.config.upstream import Failure, Follower, Link
from appliance.settings import SettingsError
from appliance.settings.model import ConfigSettings

__all__ = ["EtcdFollower", "follow_etcd", "publish_rules", "publish_version"]  # publish_*: CLI

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0  # one unary call, or a watch's answer to arrive
PAGE_LIMIT = 256  # keys per range page; halved while a page is over MAX_ANSWER_BYTES
MAX_ANSWER_BYTES = 64 << 20
EXTRA = "etcd"  # the config_meta record of where we are in etcd
MAX_RELISTS = 3  # in a row before listing again waits like a failure


class _Relist(Exception):
    """What etcd holds must be listed again (compaction, a reset cluster)."""


async def _post_async(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], limit: int
) -> bytes:
    """POST and read the answer, at most `limit` bytes, within REQUEST_TIMEOUT_S."""
    try:
        with trio.fail_after(REQUEST_TIMEOUT_S):
            async with client.stream("POST", path, json=body) as response:
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise EtcdError("etcd_answer_too_large", f"{path}: over {limit} bytes")
                    chunks.append(chunk)
    except trio.TooSlowError:
        raise EtcdUnreachable("etcd_timeout", f"etcd took over {REQUEST_TIMEOUT_S} s") from None
    except httpx.HTTPError as exc:
        raise EtcdUnreachable("etcd_unreachable", f"etcd: {exc or type(exc).__name__}") from None
    if response.status_code != 200:
        raise read_error(response.status_code, b"".join(chunks))
    return b"".join(chunks)


class EtcdFollower:
    """Keeps a replica's config in step with etcd under a prefix (see the module doc)."""

    def __init__(
        self,
        service: ConfigService,
        url: str,
        prefix: str,
        *,
        max_content_bytes: int,
        idle_s: float,
        follower: Follower | None = None,
    ) -> None:
        self.service = service
        self.url = check_url(url)
        self.prefix = check_prefix(prefix)
        self.max_content_bytes = max_content_bytes
        self.idle_s = idle_s
        self.max_line = max(16 << 20, max_value_bytes(max_content_bytes) * 4 // 3 + (64 << 10))
        self.decide = follower or Follower()
        self.status = FollowerStatus(upstream=self.url, kind="etcd")
        self.must_list = False
        self.cluster_id = ""
        self.etcd_revision = 0  # every event up to it is applied (or ignored)
        self.relists = 0  # in a row, without a watch made since

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.service.follower = self.status
        task_status.started()
        while True:
            try:
                async with httpx.AsyncClient(base_url=self.url, timeout=None) as client:
                    await self._follow(client)
            except _Relist as exc:
                self.must_list = True
                self.relists += 1
                if self.relists <= MAX_RELISTS:
                    log.info("config: listing etcd again: %s", exc)
                    continue
                # Listing does not settle it (two clusters behind one URL?): back off.
                failure = Failure(Link.FAULTY, "etcd_unsettled", f"{exc}, again after listing")
            except EtcdUnreachable as exc:
                failure = Failure(Link.OFFLINE, exc.code, exc.message)
            except ConfigError as exc:  # EtcdError, FeedError: garbage or a bad record
                failure = Failure(Link.FAULTY, exc.code, exc.message)
                self.must_list = True  # a fixed record in etcd is found by listing
            step = self.decide.failed(failure)
            self.status.connected = False
            self.status.error = failure.record(time.time())
            if step.news:
                log.warning("config: etcd at %s: %s", self.url, failure.message)
            await trio.sleep(step.delay)

    async def _follow(self, client: httpx.AsyncClient) -> None:
        start = self._resume_point()
        if start is None:
            start = await self._list(client) + 1
        while True:
            start = await self._watch(client, start)

    def _resume_point(self) -> int | None:
        if self.must_list:
            return None
        record = self.service.repository.extra(EXTRA)
        head = self.service.repository.head()["revision"]
        if (
            not isinstance(record, dict)
            or record.get("prefix") != self.prefix
            or record.get("revision") != head
            or not isinstance(record.get("etcd_revision"), int)
        ):
            return None
        self.cluster_id = record.get("cluster_id", "")
        self.etcd_revision = record["etcd_revision"]
        return self.etcd_revision + 1

    async def _list(self, client: httpx.AsyncClient) -> int:
        """List the prefix at one etcd revision, install it unless the store has the same,
        and return that revision."""
        first, end = self.prefix.encode(), prefix_end(self.prefix.encode())
        kvs: list[KeyValue] = []
        revision, cluster, limit, more = 0, "", PAGE_LIMIT, True
        while more:
            body = range_request(first, end, revision=revision, limit=limit)
            try:
                page = read_range(await _post_async(client, "/v3/kv/range", body, MAX_ANSWER_BYTES))
            except EtcdCompacted as exc:  # between two pages
                raise _Relist(exc.message) from None
            except EtcdError as exc:
                if exc.code != "etcd_answer_too_large" or limit == 1:
                    raise
                limit //= 2
                continue
            if not revision:
                revision, cluster = page.header.revision, page.header.cluster_id
            kvs.extend(page.kvs)
            more = page.more and bool(page.kvs)
            if more:
                first = page.kvs[-1].key + b"\x00"
        keys, ignored = snapshot_keys(self.prefix, kvs, self.max_content_bytes)
        self._ignored(ignored)
        stored = self.service.repository.snapshot()
        ours = stored["revision"]
        if not same_keys(stored["keys"], keys):
            ours = await self.service.install_snapshot({"revision": ours + 1, "keys": keys})
            log.info(
                "config: installed etcd's %d keys at etcd revision %d as revision %d",
                len(keys),
                revision,
                ours,
            )
        self.cluster_id = cluster
        await self._remember(revision, ours)
        self.must_list = False
        return revision

    async def _watch(self, client: httpx.AsyncClient, start: int) -> int:
        """Follow one watch from `start` until it is idle for `idle_s`; the next start."""
        reader = WatchReader(self.max_line)
        key = self.prefix.encode()
        async with contextlib.AsyncExitStack() as stack:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    body = watch_request(key, prefix_end(key), start)
                    response = await stack.enter_async_context(
                        client.stream("POST", "/v3/watch", json=body)
                    )
                if response.status_code != 200:
                    with trio.fail_after(REQUEST_TIMEOUT_S):
                        raise read_error(response.status_code, await response.aread())
                chunks = response.aiter_bytes()
                while True:
                    chunk = None
                    # Only the read is bounded: an apply is never cancelled by idleness.
                    with trio.move_on_after(self.idle_s) as idle:
                        chunk = await anext(chunks, None)
                    if idle.cancelled_caught:
                        return self.etcd_revision + 1  # idle: watch again from where we are
                    if chunk is None:
                        raise EtcdUnreachable("etcd_watch_closed", "etcd ended the watch")
                    for message in reader.feed(chunk):
                        await self._on_message(message, start)
            except trio.TooSlowError:
                raise EtcdUnreachable(
                    "etcd_timeout", f"etcd took over {REQUEST_TIMEOUT_S} s to answer a watch"
                ) from None
            except httpx.HTTPError as exc:
                raise EtcdUnreachable(
                    "etcd_unreachable", f"etcd: {exc or type(exc).__name__}"
                ) from None

    async def _on_message(self, message: WatchMessage, start: int) -> None:
        if message.canceled:
            if message.compact_revision:
                raise _Relist(f"etcd compacted through revision {message.compact_revision}")
            raise EtcdError(
                "etcd_watch_canceled", f"etcd canceled the watch: {message.cancel_reason}"
            )
        header = message.header
        if message.created:
            if self.cluster_id and header.cluster_id != self.cluster_id:
                raise _Relist(f"etcd's cluster id is {header.cluster_id}, was {self.cluster_id}")
            if header.revision < start - 1:
                raise _Relist(f"etcd is at revision {header.revision}, behind our {start - 1}")
            self.relists = 0
            if self.decide.succeeded().news:
                log.info("config: following etcd at %s from revision %d", self.url, start)
            self.status.connected = True
            self.status.error = None
            await self._remember(start - 1, self.service.repository.head()["revision"])
            return
        if not message.events:  # progress: every event up to the header revision was sent
            if header.revision > self.etcd_revision:
                await self._remember(header.revision, self.service.repository.head()["revision"])
            return
        repository = self.service.repository

        def stored_sha256(key: str, number: int) -> str | None:
            version = repository.version(parse_key(key), number)
            return None if version is None else version.sha256

        entries, ignored = entries_of(
            self.prefix,
            message.events,
            next_revision=repository.head()["revision"] + 1,
            at=time.time(),
            max_content_bytes=self.max_content_bytes,
            stored_sha256=stored_sha256,
        )
        self._ignored(ignored)
        ours = await self.service.apply(entries) if entries else repository.head()["revision"]
        await self._remember(max(event.kv.mod_revision for event in message.events), ours)

    async def _remember(self, etcd_revision: int, ours: int) -> None:
        record = {
            "prefix": self.prefix,
            "cluster_id": self.cluster_id,
            "etcd_revision": etcd_revision,
            "revision": ours,
        }
        if record != self.service.repository.extra(EXTRA):
            await self.service.repository.set_extra(EXTRA, record)
        self.etcd_revision = etcd_revision
        self.status.upstream_revision = ours
        self.status.last_sync = time.time()
        self.status.extra = {"etcd_revision": etcd_revision, "etcd_prefix": self.prefix}

    def _ignored(self, notes: list[str]) -> None:
        for note in notes[:3]:
            log.warning("config: etcd: ignored %s", note)
        if len(notes) > 3:
            log.warning("config: etcd: ignored %d more keys or events", len(notes) - 3)


async def follow_etcd(
    service: ConfigService, config: ConfigSettings, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Follow `config.upstream` (etcd) under `config.etcd_prefix` into `service`, until
    cancelled. Ready at once: the box serves what its store holds while the first listing
    is under way or etcd is unreachable. A SettingsError (before it is ready) when the
    upstream or the prefix is not usable."""
    try:
        follower = EtcdFollower(
            service,
            config.upstream.strip(),
            config.etcd_prefix,
            max_content_bytes=config.max_content_bytes,
            idle_s=max(2 * config.poll_wait_s, 5.0),
        )
    except ConfigError as exc:
        field = "config.etcd_prefix" if exc.code == "invalid_etcd_prefix" else "config.upstream"
        raise SettingsError(field, exc.message) from None
    await follower.run(task_status=task_status)
