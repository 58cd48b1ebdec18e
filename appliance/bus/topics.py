"""Topics, subscription patterns, the subscription index and topic permissions.

**Topics.** A topic is 1 to `MAX_TOKENS` (16) tokens joined by `.`, at most
`MAX_TOPIC_LENGTH` (255) characters in all. A token is 1 to `MAX_TOKEN_LENGTH` (64) of
`A-Z a-z 0-9 _ - :` (ASCII only, case-sensitive; `:` so that ids like MAC addresses fit in
one token). So there are no empty tokens (no leading, trailing or doubled dots) and no
whitespace. Tokens starting with `_` are by convention the appliance's own (`_inbox`,
`_appliance`); this module does not enforce that.

**Patterns.** A subscription pattern has the topic's shape, and any token may instead be
`*` (exactly one token) or, as the last token only, `>` (one or more tokens): `sensors.*.temp`
matches `sensors.a.temp`; `sensors.>` matches `sensors.a` and `sensors.a.b` but not
`sensors`. A wildcard is a whole token (`sens*` is invalid). A pattern without wildcards
matches exactly the topic with the same text.

**Errors.** `TopicError` with `code` `invalid_topic` or `invalid_pattern` (and
`invalid_group`, `duplicate_subscription`, `too_many_subscriptions` from the index), a
message naming the offending token, and `token_index` (0-based, or None for the whole).

**Coverage.** `pattern_covers(allowed, requested)` is true when every topic `requested` can
match is matched by at least one of `allowed` (a union, so `[a.*, a.*.>]` covers `a.>`).
Tokens are an open set, so a `*` or `>` in the request is only covered by a `*` or `>` in
an allowed pattern, never by literal tokens. See `pattern_covers` for the exact rule.

**Index.** `SubscriptionIndex` keeps subscriptions in a token trie (the root's children are
first pattern tokens, `*` and `>` are children like any token) and answers "who gets this
topic" by walking it: at most three branches per token (the literal, `*`, `>`), independent
of how many subscriptions exist. Queue groups are identified by (pattern, group name), as
in NATS: members of the group subscribed to the same pattern share its messages, one
member per message, chosen round-robin or by an injected chooser.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

MAX_TOKEN_LENGTH = 64
MAX_TOKENS = 16
MAX_TOPIC_LENGTH = 255
STAR = "*"
TAIL = ">"

_TOKEN_CHARS = r"A-Za-z0-9_:\-"
_TOKEN = re.compile(rf"[{_TOKEN_CHARS}]{{1,{MAX_TOKEN_LENGTH}}}")
_TOPIC = re.compile(rf"{_TOKEN.pattern}(?:\.{_TOKEN.pattern}){{0,{MAX_TOKENS - 1}}}")
_ALLOWED = f"1-{MAX_TOKEN_LENGTH} of A-Z a-z 0-9 _ - :"


class TopicError(ValueError):
    """A topic, pattern or subscription the bus refuses. `code` is stable."""

    def __init__(self, code: str, message: str, token_index: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.token_index = token_index


def _explain(text: object, code: str, *, pattern: bool) -> TopicError:
    """The precise error for a text that failed the fast check."""
    what = "pattern" if pattern else "topic"
    if not isinstance(text, str):
        return TopicError(code, f"a {what} is a string, not {type(text).__name__}")
    if not text:
        return TopicError(code, f"a {what} has at least one token")
    if len(text) > MAX_TOPIC_LENGTH:
        return TopicError(code, f"a {what} is at most {MAX_TOPIC_LENGTH} characters")
    tokens = text.split(".")
    if len(tokens) > MAX_TOKENS:
        return TopicError(code, f"a {what} has at most {MAX_TOKENS} tokens, not {len(tokens)}")
    for i, token in enumerate(tokens):
        if not token:
            return TopicError(code, f"token {i} is empty (leading, trailing or double dot)", i)
        if token in (STAR, TAIL):
            if not pattern:
                return TopicError(code, f"token {i}: a topic has no wildcards ({token!r})", i)
            if token == TAIL and i != len(tokens) - 1:
                return TopicError(code, f"token {i}: '>' is allowed only as the last token", i)
            continue
        if not _TOKEN.fullmatch(token):
            hint = " (a wildcard is a whole token)" if "*" in token or ">" in token else ""
            return TopicError(code, f"token {i} {token[:80]!r}: {_ALLOWED}{hint}", i)
    return TopicError(code, f"invalid {what}")  # not reached: the fast check passed


def split_topic(text: str) -> tuple[str, ...]:
    """The tokens of a valid topic, or TopicError `invalid_topic`."""
    if isinstance(text, str) and len(text) <= MAX_TOPIC_LENGTH and _TOPIC.fullmatch(text):
        return tuple(text.split("."))
    raise _explain(text, "invalid_topic", pattern=False)


def validate_topic(text: str) -> str:
    """`text` if it is a valid topic, else TopicError `invalid_topic`."""
    split_topic(text)
    return text


@dataclass(frozen=True)
class Pattern:
    """A validated subscription pattern; build with `parse_pattern`."""

    text: str
    tokens: tuple[str, ...] = field(repr=False, compare=False)

    def __str__(self) -> str:
        return self.text

    @property
    def is_literal(self) -> bool:
        """True when the pattern has no wildcard (it matches exactly one topic)."""
        return STAR not in self.tokens and TAIL not in self.tokens

    def matches(self, topic: str | Sequence[str]) -> bool:
        """Whether this pattern matches a topic (text, or its tokens)."""
        tokens = split_topic(topic) if isinstance(topic, str) else topic
        return _matches(self.tokens, tokens)

    def covers(self, other: Pattern) -> bool:
        """Whether every topic `other` matches is matched by this pattern."""
        return pattern_covers([self], other)


def parse_pattern(text: str) -> Pattern:
    """A validated pattern, or TopicError `invalid_pattern` naming the offending token."""
    if isinstance(text, str) and 0 < len(text) <= MAX_TOPIC_LENGTH:
        tokens = tuple(text.split("."))
        if len(tokens) <= MAX_TOKENS and all(
            t == STAR or (t == TAIL and i == len(tokens) - 1) or _TOKEN.fullmatch(t)
            for i, t in enumerate(tokens)
        ):
            return Pattern(text, tokens)
    raise _explain(text, "invalid_pattern", pattern=True)


def _matches(pattern: Sequence[str], topic: Sequence[str | None]) -> bool:
    """Token-wise match. A `None` topic token stands for a token no pattern names."""
    n = len(pattern)
    if n and pattern[-1] == TAIL:
        if len(topic) < n:
            return False
        n -= 1
    elif len(topic) != n:
        return False
    return all(p in (STAR, t) for p, t in zip(pattern[:n], topic, strict=False))


def pattern_covers(allowed: Iterable[Pattern], requested: Pattern) -> bool:
    """Whether the union of `allowed` matches every topic that `requested` matches.

    The rule, exact for topics up to `MAX_TOKENS` tokens: for each length L that
    `requested` can match, build its *generic* topic — the request's literal tokens where it
    has them and, at every `*` and `>` position, a token that no pattern names — and ask
    whether some allowed pattern matches it. A pattern matching the generic topic has, at
    every wildcard position of the request, a `*` or its own `>`, and at every literal
    position the same literal or a wildcard, so it matches *every* topic of length L the
    request matches; conversely the generic topic is itself one the request matches.
    Once L is past every allowed pattern's length every length behaves alike, so only
    lengths up to one more than the longest allowed pattern (at most MAX_TOKENS) are
    checked. Hence `sensors.>` covers `sensors.*.temp`, `sensors.*` does not cover
    `sensors.>` (which also matches `sensors.a.b`), `a.b` does not cover `a.*`, and
    `[a.*, a.*.>]` together cover `a.>`.
    """
    allowed = list(allowed)
    req = requested.tokens
    generic: list[str | None] = [None if t in (STAR, TAIL) else t for t in req]
    if req[-1] == TAIL:
        # A length L >= n makes the generic topic: the request's first n-1 tokens, then
        # fresh ones. Past every allowed pattern's length (+1, so that a pattern of exactly
        # that length without `>` no longer fits) the answer no longer changes.
        longest = max((len(p.tokens) for p in allowed), default=0)
        prefix = generic[:-1]
        for length in range(len(req), min(max(len(req), longest + 1), MAX_TOKENS) + 1):
            topic = prefix + [None] * (length - len(prefix))
            if not any(_matches(p.tokens, topic) for p in allowed):
                return False
        return True
    return any(_matches(p.tokens, generic) for p in allowed)


@dataclass(frozen=True)
class Permissions:
    """A token's topic permissions: patterns it may publish to and subscribe with.

    `may_publish(topic)`: some publish pattern matches the topic. `may_subscribe(pattern)`:
    the subscribe patterns together cover every topic the requested pattern can match
    (`pattern_covers`), so a subscription never receives a topic the token could not
    have subscribed to by name.
    """

    publish: tuple[Pattern, ...] = ()
    subscribe: tuple[Pattern, ...] = ()

    @classmethod
    def from_texts(cls, publish: Iterable[str], subscribe: Iterable[str]) -> Permissions:
        """Parse pattern lists (TopicError `invalid_pattern` for a bad one)."""
        return cls(
            tuple(parse_pattern(p) for p in publish), tuple(parse_pattern(p) for p in subscribe)
        )

    @classmethod
    def allow_all(cls) -> Permissions:
        everything = (parse_pattern(TAIL),)
        return cls(everything, everything)

    def may_publish(self, topic: str | Sequence[str]) -> bool:
        tokens = split_topic(topic) if isinstance(topic, str) else topic
        return any(_matches(p.tokens, tokens) for p in self.publish)

    def may_subscribe(self, pattern: Pattern) -> bool:
        return pattern_covers(self.subscribe, pattern)


# --- the subscription index -------------------------------------------------------------

_GROUP = re.compile(rf"[{_TOKEN_CHARS}.]{{1,{MAX_TOKEN_LENGTH}}}")


@dataclass(frozen=True)
class Subscription:
    """One subscription: `sid` is the subscriber's id for it, unique per `connection`."""

    connection: Hashable
    sid: Hashable
    pattern: Pattern
    group: str | None = None

    @property
    def key(self) -> tuple[Hashable, Hashable]:
        return (self.connection, self.sid)


class _Group:
    __slots__ = ("cursor", "members")

    def __init__(self) -> None:
        self.members: dict[tuple[Hashable, Hashable], Subscription] = {}
        self.cursor = 0


class _Node:
    __slots__ = ("children", "groups", "plain")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.plain: dict[tuple[Hashable, Hashable], Subscription] = {}
        self.groups: dict[str, _Group] = {}

    def empty(self) -> bool:
        return not (self.children or self.plain or self.groups)


Chooser = Callable[[int], int]
"""Picks a queue-group member: given the member count n, returns an index in range(n)."""


MATCH_CACHE = 4096  # topics whose matching trie nodes are remembered


class SubscriptionIndex:
    """Subscriptions by pattern, in a token trie, with queue groups.

    `match(topic)` returns the subscriptions that get one published message: every plain
    subscription whose pattern matches, plus one member of each matching queue group. The
    member is chosen round-robin in join order, or by `chooser(n) -> index` when given
    (`random.Random(seed).randrange` for random choice, a fixed function in tests).
    `max_per_connection` bounds one connection's subscriptions.
    """

    def __init__(
        self, *, chooser: Chooser | None = None, max_per_connection: int | None = None
    ) -> None:
        self._root = _Node()
        self._chooser = chooser
        self._max_per_connection = max_per_connection
        self._by_connection: dict[Hashable, dict[Hashable, Subscription]] = {}
        self._count = 0
        # topic -> the trie nodes matching it, while no subscription changes (bounded).
        self._matched: dict[str, list[_Node]] = {}

    def __len__(self) -> int:
        return self._count

    def get(self, connection: Hashable, sid: Hashable) -> Subscription | None:
        return self._by_connection.get(connection, {}).get(sid)

    def of_connection(self, connection: Hashable) -> list[Subscription]:
        return list(self._by_connection.get(connection, {}).values())

    def all(self) -> list[Subscription]:
        return [sub for subs in self._by_connection.values() for sub in subs.values()]

    def add(
        self, connection: Hashable, sid: Hashable, pattern: Pattern | str, group: str | None = None
    ) -> Subscription:
        """Add a subscription (TopicError: invalid_pattern, invalid_group,
        duplicate_subscription, too_many_subscriptions)."""
        if isinstance(pattern, str):
            pattern = parse_pattern(pattern)
        if group is not None and not (isinstance(group, str) and _GROUP.fullmatch(group)):
            raise TopicError(
                "invalid_group", f"a queue group is 1-{MAX_TOKEN_LENGTH} of A-Z a-z 0-9 _ - : ."
            )
        mine = self._by_connection.get(connection, {})
        if sid in mine:
            raise TopicError("duplicate_subscription", f"subscription {sid!r} already exists")
        if self._max_per_connection is not None and len(mine) >= self._max_per_connection:
            raise TopicError(
                "too_many_subscriptions",
                f"a connection holds at most {self._max_per_connection} subscriptions",
            )
        sub = Subscription(connection, sid, pattern, group)
        self._matched.clear()
        node = self._root
        for token in pattern.tokens:
            node = node.children.setdefault(token, _Node())
        if group is None:
            node.plain[sub.key] = sub
        else:
            node.groups.setdefault(group, _Group()).members[sub.key] = sub
        self._by_connection.setdefault(connection, {})[sid] = sub
        self._count += 1
        return sub

    def remove(self, connection: Hashable, sid: Hashable) -> Subscription | None:
        """Remove one subscription; None if there is no such subscription."""
        mine = self._by_connection.get(connection)
        if not mine or sid not in mine:
            return None
        sub = mine.pop(sid)
        self._matched.clear()
        if not mine:
            del self._by_connection[connection]
        path = [self._root]
        for token in sub.pattern.tokens:
            path.append(path[-1].children[token])
        node = path[-1]
        if sub.group is None:
            del node.plain[sub.key]
        else:
            group = node.groups[sub.group]
            del group.members[sub.key]
            if not group.members:
                del node.groups[sub.group]
        for depth in range(len(path) - 1, 0, -1):  # prune emptied nodes, deepest first
            if not path[depth].empty():
                break
            del path[depth - 1].children[sub.pattern.tokens[depth - 1]]
        self._count -= 1
        return sub

    def remove_connection(self, connection: Hashable) -> list[Subscription]:
        """Remove every subscription of a connection (it went away)."""
        removed = []
        for sid in list(self._by_connection.get(connection, {})):
            sub = self.remove(connection, sid)
            if sub is not None:
                removed.append(sub)
        return removed

    def _nodes(self, tokens: Sequence[str]) -> list[_Node]:
        """The trie nodes whose pattern matches `tokens` (each pattern matches in one way)."""
        found: list[_Node] = []
        last = len(tokens)
        stack = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == last:
                found.append(node)
                continue
            children = node.children
            tail = children.get(TAIL)
            if tail is not None:
                found.append(tail)
            child = children.get(tokens[i])
            if child is not None:
                stack.append((child, i + 1))
            star = children.get(STAR)
            if star is not None:
                stack.append((star, i + 1))
        return found

    def match(
        self, topic: str | Sequence[str], *, exclude: Container[Hashable] = ()
    ) -> list[Subscription]:
        """Who gets one message on `topic`: each (connection, sid) at most once, in no
        particular order. Advances the round-robin of every matching queue group. The
        connections in `exclude` get nothing and are never chosen in a group (a message's
        source link: another member gets it)."""
        if isinstance(topic, str):
            nodes = self._matched.get(topic)
            if nodes is None:
                nodes = self._nodes(split_topic(topic))
                if len(self._matched) >= MATCH_CACHE:
                    self._matched.clear()
                self._matched[topic] = nodes
        else:
            nodes = self._nodes(topic)
        out: list[Subscription] = []
        for node in nodes:
            if not exclude:
                out.extend(node.plain.values())
            else:
                out.extend(s for s in node.plain.values() if s.connection not in exclude)
            for group in node.groups.values():
                chosen = self._choose(group, exclude)
                if chosen is not None:
                    out.append(chosen)
        return out

    def has_subscribers(self, topic: str | Sequence[str]) -> bool:
        """Whether any subscription matches, without choosing group members."""
        tokens = split_topic(topic) if isinstance(topic, str) else topic
        return any(node.plain or node.groups for node in self._nodes(tokens))

    def _choose(self, group: _Group, exclude: Container[Hashable] = ()) -> Subscription | None:
        members = [s for s in group.members.values() if s.connection not in exclude]
        if not members:
            return None
        if self._chooser is None:
            index = group.cursor % len(members)
            group.cursor = index + 1
        else:
            index = self._chooser(len(members))
            if not 0 <= index < len(members):
                raise ValueError(f"chooser returned {index} for {len(members)} members")
        return members[index]
