"""Retained last values per topic, bounded in count and bytes (sans-IO).

A publish marked *retain* stores its payload as the topic's last value; a new subscription
is first sent the retained values of every topic its pattern matches, as MQTT users expect.
A retained publish with an empty payload clears the topic's value (MQTT's rule).

**Size.** An entry's size is `len(topic) + len(payload)` plus the length of each header
key and value; `bytes_used` is the sum. `max_count` bounds the number of topics,
`max_bytes` the sum, and `max_value_bytes` (default: `max_bytes`) one entry.

**When it is full** (`Overflow`):

- `REFUSE` (the default): a value for a *new* topic that does not fit is refused; updates
  of topics already held are accepted whenever the new value fits in the room the old one
  leaves. This protects the values already held: a client spraying retained messages over
  many topics cannot flush everyone else's state.
- `EVICT_OLDEST`: the least recently *updated* topics are evicted until the value fits
  (reads do not count as use: a `>` subscription would otherwise refresh everything).

Either way nothing happens silently: `put` returns a `PutResult` naming what was stored,
refused (with `refused` = `retained_full` or `retained_too_large`) and evicted, for the
endpoint to report and count. **A topic's retained value is its latest retained publish
or nothing, never an older one**: when an update is refused, the old value is removed too
(`PutResult.removed`), so a subscriber never starts from a value that was since replaced.

Lookup by pattern walks a token trie of the held topics (a literal token follows one
branch, `*` every child, `>` every descendant), so it costs the size of the answer, not of
the store.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from appliance.bus.topics import STAR, TAIL, Pattern, parse_pattern, split_topic


class Overflow(enum.Enum):
    REFUSE = "refuse"
    EVICT_OLDEST = "evict_oldest"


@dataclass(frozen=True)
class Retained:
    """One retained value; `headers` are sorted (key, value) pairs."""

    topic: str
    payload: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def size(self) -> int:
        return len(self.topic) + len(self.payload) + sum(len(k) + len(v) for k, v in self.headers)


@dataclass(frozen=True)
class PutResult:
    """What one `put` did. `stored` is False when the value was refused (`refused` says
    why) or was a clear; `removed` is True when an old value of the topic is gone
    (cleared, or dropped because its update was refused); `evicted` names other topics
    whose values made room (EVICT_OLDEST only)."""

    stored: bool
    removed: bool = False
    refused: str | None = None
    evicted: tuple[str, ...] = ()


class _Node:
    __slots__ = ("children", "entry")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.entry: Retained | None = None


class RetainedStore:
    def __init__(
        self,
        *,
        max_count: int,
        max_bytes: int,
        max_value_bytes: int | None = None,
        overflow: Overflow = Overflow.REFUSE,
    ) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be positive")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_value_bytes = min(max_bytes, max_value_bytes or max_bytes)
        self.overflow = overflow
        self._entries: OrderedDict[str, Retained] = OrderedDict()  # oldest update first
        self._root = _Node()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, topic: object) -> bool:
        return topic in self._entries

    def __iter__(self) -> Iterator[Retained]:
        """Values from the least to the most recently updated."""
        return iter(list(self._entries.values()))

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def get(self, topic: str) -> Retained | None:
        return self._entries.get(topic)

    def put(
        self, topic: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> PutResult:
        """Retain `payload` as `topic`'s last value (an empty payload clears it).
        TopicError `invalid_topic` for a bad topic."""
        split_topic(topic)
        if not payload:
            return PutResult(stored=False, removed=self.remove(topic) is not None)
        entry = Retained(topic, bytes(payload), tuple(sorted((headers or {}).items())))
        size = entry.size
        if size > self.max_value_bytes:
            return PutResult(False, self.remove(topic) is not None, "retained_too_large")
        old = self._entries.get(topic)
        room_needed = size - (old.size if old else 0)
        new_topic = old is None
        fits = self._bytes + room_needed <= self.max_bytes and (
            not new_topic or len(self._entries) < self.max_count
        )
        evicted: list[str] = []
        if not fits:
            if self.overflow is Overflow.REFUSE:
                return PutResult(False, self.remove(topic) is not None, "retained_full")
            for victim in list(self._entries):
                if victim == topic:
                    continue
                if self._bytes + room_needed <= self.max_bytes and (
                    not new_topic or len(self._entries) < self.max_count
                ):
                    break
                self.remove(victim)
                evicted.append(victim)
        if old is not None:
            self._bytes -= old.size
            self._entries.move_to_end(topic)
        self._entries[topic] = entry
        self._bytes += size
        node = self._root
        for token in topic.split("."):
            node = node.children.setdefault(token, _Node())
        node.entry = entry
        return PutResult(stored=True, removed=False, evicted=tuple(evicted))

    def remove(self, topic: str) -> Retained | None:
        """Forget a topic's value; None if it had none."""
        entry = self._entries.pop(topic, None)
        if entry is None:
            return None
        self._bytes -= entry.size
        tokens = topic.split(".")
        path = [self._root]
        for token in tokens:
            path.append(path[-1].children[token])
        path[-1].entry = None
        for depth in range(len(path) - 1, 0, -1):
            node = path[depth]
            if node.entry is not None or node.children:
                break
            del path[depth - 1].children[tokens[depth - 1]]
        return entry

    def matching(self, pattern: Pattern | str) -> list[Retained]:
        """The retained values a new subscription with `pattern` gets, sorted by topic.
        TopicError `invalid_pattern` for a bad pattern."""
        if isinstance(pattern, str):
            pattern = parse_pattern(pattern)
        if pattern.is_literal:
            entry = self._entries.get(pattern.text)
            return [entry] if entry else []
        found: list[Retained] = []
        tokens = pattern.tokens
        stack = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == len(tokens):
                if node.entry is not None:
                    found.append(node.entry)
                continue
            token = tokens[i]
            if token == TAIL:
                for child in node.children.values():
                    found.extend(_all_below(child))
            elif token == STAR:
                stack.extend((child, i + 1) for child in node.children.values())
            else:
                child = node.children.get(token)
                if child is not None:
                    stack.append((child, i + 1))
        found.sort(key=lambda entry: entry.topic)
        return found


def _all_below(node: _Node) -> Iterator[Retained]:
    stack = [node]
    while stack:
        node = stack.pop()
        if node.entry is not None:
            yield node.entry
        stack.extend(node.children.values())
