"""What a replica makes of its upstream, sans-IO: the answers it reads and when it retries.

No trio and no sockets here; `replica.py` moves the bytes. This module holds:

- `read_log` / `read_snapshot`: an HTTP status and body in, a `Page`, `Compacted`,
  snapshot or `Failure` out. Whatever the upstream sends either reads as one of those or
  is a `Failure`; nothing here raises on remote garbage.
- `Link`, the follower's state, and `RETRY`, the table of how long each failing state
  waits before the next attempt (exponential with jitter, capped).
- `Follower`, the decision logic: told each outcome, it says the new state, whether that
  is news worth one log line, and how long to wait.

The link's states (any state may follow any other; the table is of waits, not of edges):

    STARTING --ok--> CONNECTED --unreachable, 5xx, 429--> OFFLINE
                               --401, 403---------------> REFUSED
                               --garbage, bad entries---> FAULTY
    (every failing state) --ok--> CONNECTED
"""

from __future__ import annotations

import enum
import json
import random
from dataclasses import dataclass
from typing import Any


class Link(enum.Enum):
    STARTING = "starting"  # no answer yet since the start
    CONNECTED = "connected"  # the last exchange succeeded: following
    OFFLINE = "offline"  # unreachable, timed out, or the upstream said it was unavailable
    REFUSED = "refused"  # 401/403: this replica's token is wrong or was revoked
    FAULTY = "faulty"  # it answered with something this replica will not apply


@dataclass(frozen=True)
class Backoff:
    """Waits of `base * 2**(n-1)` for the n-th failure in a row, at most `cap`, with
    "equal jitter": half of it fixed, half random, so a fleet does not retry in step."""

    base: float
    cap: float

    def delay(self, failures: int, rng: random.Random) -> float:
        full = min(self.cap, self.base * 2 ** min(max(failures - 1, 0), 32))
        return full / 2 + rng.uniform(0, full / 2)


RETRY: dict[Link, Backoff] = {
    Link.OFFLINE: Backoff(base=0.25, cap=30.0),
    Link.REFUSED: Backoff(base=5.0, cap=60.0),  # a token is fixed by a person, not by retrying
    Link.FAULTY: Backoff(base=0.5, cap=30.0),
}


@dataclass(frozen=True)
class Page:
    """A page of the feed: entries after the revision asked for, and the upstream's head."""

    revision: int
    compacted_through: int
    entries: tuple[dict[str, Any], ...]

    @property
    def upstream_revision(self) -> int:
        last = self.entries[-1].get("revision") if self.entries else None
        return max(self.revision, last) if isinstance(last, int) else self.revision


@dataclass(frozen=True)
class Compacted:
    """410 `revision_compacted`: the upstream's log no longer reaches back to us."""

    compacted_through: int | None
    revision: int | None


@dataclass(frozen=True)
class Failure:
    """An attempt that did not move this replica forward, and why."""

    link: Link
    code: str
    message: str
    retry_after: float | None = None  # what the upstream asked for (429, 503)
    upstream_revision: int | None = None  # when the answer told us

    def __post_init__(self) -> None:
        if self.link not in RETRY:
            raise ValueError(
                f"a failure leaves the link offline, refused or faulty, not {self.link}"
            )

    def record(self, at: float) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "at": at}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _NOT_JSON


_NOT_JSON = object()


def _retry_after(headers: dict[str, str]) -> float | None:
    raw = headers.get("retry-after", "")
    try:
        value = float(raw) if 0 < len(raw) <= 16 else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value <= 3600 else None


def read_status(status: int, body: bytes, headers: dict[str, str]) -> Failure | None:
    """The failure an HTTP status means, or None for 2xx. 410 is the caller's to read."""
    if 200 <= status < 300:
        return None
    problem = _json(body)
    detail = ""
    if isinstance(problem, dict) and isinstance(problem.get("detail"), str):
        detail = f": {problem['detail'][:200]}"
    if status in (401, 403):
        return Failure(
            Link.REFUSED,
            "upstream_refused",
            f"the upstream refused this replica's token (HTTP {status}{detail}); "
            "check config.upstream_token",
        )
    if status == 429 or status >= 500:
        return Failure(
            Link.OFFLINE,
            "upstream_unavailable",
            f"the upstream answered HTTP {status}{detail}",
            retry_after=_retry_after(headers),
        )
    return Failure(
        Link.FAULTY,
        "upstream_bad_response",
        f"the upstream answered HTTP {status}{detail}; is config.upstream an appliance?",
    )


def read_log(
    status: int, body: bytes, headers: dict[str, str] | None = None
) -> Page | Compacted | Failure:
    """Read an answer to `GET /api/v1/config/log`."""
    headers = headers or {}
    if status == 410:
        problem = _json(body)
        if isinstance(problem, dict) and problem.get("code") == "revision_compacted":
            through = problem.get("compacted_through")
            revision = problem.get("revision")
            return Compacted(
                through if _is_int(through) else None, revision if _is_int(revision) else None
            )
    failure = read_status(status, body, headers)
    if failure is not None:
        return failure
    page = _json(body)
    if (
        not isinstance(page, dict)
        or not _is_int(page.get("revision"))
        or not _is_int(page.get("compacted_through"))
        or not isinstance(page.get("entries"), list)
    ):
        return Failure(
            Link.FAULTY,
            "upstream_bad_response",
            "the upstream's feed page is not JSON of {revision, compacted_through, entries}",
        )
    return Page(page["revision"], page["compacted_through"], tuple(page["entries"]))


def read_snapshot(
    status: int, body: bytes, headers: dict[str, str] | None = None
) -> dict[str, Any] | Failure:
    """Read an answer to `GET /api/v1/config/snapshot` (its content is checked on install)."""
    failure = read_status(status, body, headers or {})
    if failure is not None:
        return failure
    snapshot = _json(body)
    if not isinstance(snapshot, dict) or not _is_int(snapshot.get("revision")):
        return Failure(
            Link.FAULTY,
            "upstream_bad_response",
            "the upstream's snapshot is not JSON of {revision, keys}",
        )
    return snapshot


def check_page(page: Page, local_revision: int) -> Failure | None:
    """What is wrong with a well-formed page before its entries are even looked at."""
    if page.revision < local_revision:
        return Failure(
            Link.FAULTY,
            "upstream_behind",
            f"the upstream is at revision {page.revision}, behind this replica's "
            f"{local_revision}; was it reset? (keeping revision {local_revision})",
            upstream_revision=page.revision,
        )
    if not page.entries and page.revision > local_revision:
        return Failure(
            Link.FAULTY,
            "upstream_bad_response",
            f"the upstream is at revision {page.revision} but sent nothing after {local_revision}",
            upstream_revision=page.revision,
        )
    return None


@dataclass(frozen=True)
class Step:
    """What the driver does after an outcome: the new state, whether that is news (one
    log line per change of state or of error code, not one per retry), and the wait."""

    link: Link
    news: bool
    delay: float


class Follower:
    """The decision logic of a replica's follower, fed outcomes, giving steps."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.link = Link.STARTING
        self.code: str | None = None
        self.failures = 0  # in a row

    def succeeded(self) -> Step:
        news = self.link is not Link.CONNECTED
        self.link, self.code, self.failures = Link.CONNECTED, None, 0
        return Step(Link.CONNECTED, news, 0.0)

    def failed(self, failure: Failure) -> Step:
        news = (failure.link, failure.code) != (self.link, self.code)
        self.link, self.code = failure.link, failure.code
        self.failures += 1
        delay = RETRY[failure.link].delay(self.failures, self.rng)
        if failure.retry_after is not None:
            delay = max(delay, min(failure.retry_after, RETRY[failure.link].cap))
        return Step(failure.link, news, delay)
