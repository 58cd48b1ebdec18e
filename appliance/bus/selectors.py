"""Label selectors for discovery, as in Kubernetes, and the registry of node records.

**Syntax.** A selector is requirements joined by `,` (all must hold; the empty selector
matches everything). Whitespace between tokens is ignored.

    key=value   key==value   label present with that value
    key!=value                label absent, or present with another value
    key in (a,b)              label present with one of the values
    key notin (a,b)           label absent, or present with none of the values
    key                       label present (any value)
    !key                      label absent

`key=` (nothing after `=`) means the empty value. `in`/`notin` need at least one value;
`in` and `notin` are keywords, so they cannot be keys. At most `MAX_SELECTOR_LENGTH`
characters.

**Labels** follow Kubernetes: a key is `[prefix/]name`, the name 1-63 of `A-Z a-z 0-9
- _ .` starting and ending with a letter or digit, the optional prefix a DNS subdomain
(lowercase, at most 253); a value is empty or 1-63 characters like a name.

**Errors.** `SelectorError` with `code` `invalid_selector` and `position`, the 0-based
index of the offending character in the text; `invalid_label` and `invalid_node_name` for
records put in the registry (position None).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Generic, TypeVar

MAX_SELECTOR_LENGTH = 4096
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_LABEL_NAME = re.compile(_NAME)
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_PREFIX = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_NODE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?")
_SPECIAL = "!=,()"


class SelectorError(ValueError):
    def __init__(self, code: str, message: str, position: int | None = None) -> None:
        where = f" at {position}" if position is not None else ""
        super().__init__(f"{message}{where}")
        self.code = code
        self.message = message
        self.position = position


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a valid label key, or None when it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and not (0 < len(prefix) <= 253 and _PREFIX.fullmatch(prefix)):
        return f"label key prefix {prefix[:80]!r}: a lowercase DNS subdomain, at most 253"
    if not _LABEL_NAME.fullmatch(name):
        return (
            f"label key {key[:80]!r}: 1-63 of A-Z a-z 0-9 - _ . starting and ending "
            "with a letter or digit, after an optional prefix/"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None when it is."""
    if value == "" or _LABEL_NAME.fullmatch(value):
        return None
    return (
        f"label value {value[:80]!r}: empty, or 1-63 of A-Z a-z 0-9 - _ . starting and "
        "ending with a letter or digit"
    )


class Op(enum.Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    NOT_EXISTS = "!"


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op is Op.EQUALS or self.op is Op.IN:
            return value is not None and value in self.values
        if self.op is Op.NOT_EQUALS or self.op is Op.NOT_IN:
            return value is None or value not in self.values
        if self.op is Op.EXISTS:
            return value is not None
        return value is None

    def __str__(self) -> str:
        if self.op is Op.EXISTS:
            return self.key
        if self.op is Op.NOT_EXISTS:
            return f"!{self.key}"
        if self.op in (Op.EQUALS, Op.NOT_EQUALS):
            return f"{self.key}{self.op.value}{next(iter(self.values))}"
        return f"{self.key} {self.op.value} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class Selector:
    """Parsed requirements, all of which must hold. `str()` gives the canonical text."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


# --- the parser ----------------------------------------------------------------------------


def _lex(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, position) tokens; kinds: ident, in, notin, !, !=, =, ',', (, ), end."""
    tokens: list[tuple[str, str, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in _SPECIAL:
            two = text[i : i + 2]
            if two in ("!=", "=="):
                tokens.append(("!=" if two == "!=" else "=", two, i))
                i += 2
            else:
                tokens.append((c, c, i))
                i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in _SPECIAL:
                i += 1
            word = text[start:i]
            tokens.append((word if word in ("in", "notin") else "ident", word, start))
    tokens.append(("end", "", n))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, message: str, token: tuple[str, str, int]) -> SelectorError:
        got = f"{token[1]!r}" if token[0] != "end" else "the end"
        return SelectorError("invalid_selector", f"{message}, got {got}", token[2])

    def key(self) -> str:
        token = self.take()
        if token[0] != "ident":
            raise self.fail("expected a label key", token)
        problem = label_key_problem(token[1])
        if problem:
            raise SelectorError("invalid_selector", problem, token[2])
        return token[1]

    def value(self) -> str:
        token = self.take()
        if token[0] != "ident":
            raise self.fail("expected a label value", token)
        problem = label_value_problem(token[1])
        if problem:
            raise SelectorError("invalid_selector", problem, token[2])
        return token[1]

    def requirement(self) -> Requirement:
        if self.peek()[0] == "!":
            self.take()
            return Requirement(self.key(), Op.NOT_EXISTS)
        key = self.key()
        kind = self.peek()[0]
        if kind in (",", "end"):
            return Requirement(key, Op.EXISTS)
        if kind in ("=", "!="):
            self.take()
            op = Op.EQUALS if kind == "=" else Op.NOT_EQUALS
            if self.peek()[0] in (",", "end"):
                return Requirement(key, op, frozenset({""}))
            return Requirement(key, op, frozenset({self.value()}))
        if kind in ("in", "notin"):
            self.take()
            opening = self.take()
            if opening[0] != "(":
                raise self.fail(f"expected '(' after {kind}", opening)
            values = {self.value()}
            while self.peek()[0] == ",":
                self.take()
                values.add(self.value())
            closing = self.take()
            if closing[0] != ")":
                raise self.fail("expected ',' or ')' in the value list", closing)
            return Requirement(key, Op.IN if kind == "in" else Op.NOT_IN, frozenset(values))
        raise self.fail("expected =, ==, !=, in, notin, ',' or the end after a key", self.peek())

    def selector(self) -> Selector:
        if self.peek()[0] == "end":
            return Selector()
        requirements = [self.requirement()]
        while True:
            token = self.take()
            if token[0] == "end":
                return Selector(tuple(requirements))
            if token[0] != ",":
                raise self.fail("expected ',' or the end after a requirement", token)
            requirements.append(self.requirement())


def parse_selector(text: str) -> Selector:
    """Parse a selector; SelectorError `invalid_selector` with the position of the fault."""
    if not isinstance(text, str):
        raise SelectorError("invalid_selector", "a selector is a string")
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(
            "invalid_selector",
            f"a selector is at most {MAX_SELECTOR_LENGTH} characters",
            MAX_SELECTOR_LENGTH,
        )
    return _parse(text)


@lru_cache(maxsize=256)
def _parse(text: str) -> Selector:
    return _Parser(text).selector()


def matches(selector: Selector | str, labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy `selector` (parsed first if it is text)."""
    if isinstance(selector, str):
        selector = parse_selector(selector)
    return selector.matches(labels)


# --- the node registry -----------------------------------------------------------------------

R = TypeVar("R")


@dataclass(frozen=True)
class Node(Generic[R]):
    """A registered node: its name, its labels and the record it came with (the hello's
    node record, opaque here)."""

    name: str
    labels: Mapping[str, str]
    record: R


class NodeRegistry(Generic[R]):
    """Node records by name, queried by label selector. Pure: the router adds a node on
    a hello or a `register`, replaces it when its holder registers it again (new labels),
    removes it on `deregister`, on a register of another name, or when the connection
    goes. `max_nodes` bounds the registry (`SelectorError` `too_many_nodes`)."""

    def __init__(self, *, max_nodes: int | None = None) -> None:
        self._nodes: dict[str, Node[R]] = {}
        self._max_nodes = max_nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __iter__(self) -> Iterator[Node[R]]:
        return iter(sorted(self._nodes.values(), key=lambda node: node.name))

    def get(self, name: str) -> Node[R] | None:
        return self._nodes.get(name)

    def put(self, name: str, labels: Mapping[str, str], record: R) -> bool:
        """Add or replace a node; True when it is new. Refuses bad names and labels
        (`invalid_node_name`, `invalid_label`) and a new node beyond `max_nodes`."""
        if not (isinstance(name, str) and _NODE_NAME.fullmatch(name)):
            raise SelectorError(
                "invalid_node_name",
                f"node name {str(name)[:80]!r}: 1-253 of A-Z a-z 0-9 - _ . starting and "
                "ending with a letter or digit",
            )
        for key, value in labels.items():
            problem = (
                label_key_problem(key) if isinstance(key, str) else "a label key is a string"
            ) or (
                label_value_problem(value)
                if isinstance(value, str)
                else "a label value is a string"
            )
            if problem:
                raise SelectorError("invalid_label", problem)
        new = name not in self._nodes
        if new and self._max_nodes is not None and len(self._nodes) >= self._max_nodes:
            raise SelectorError("too_many_nodes", f"the registry holds {self._max_nodes} nodes")
        self._nodes[name] = Node(name, MappingProxyType(dict(labels)), record)
        return new

    def remove(self, name: str) -> Node[R] | None:
        return self._nodes.pop(name, None)

    def select(self, selector: Selector | str) -> list[Node[R]]:
        """The nodes whose labels satisfy `selector`, sorted by name."""
        if isinstance(selector, str):
            selector = parse_selector(selector)
        return [node for node in self if selector.matches(node.labels)]
