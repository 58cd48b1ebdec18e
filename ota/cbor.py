"""Strict CBOR for bundle headers and manifests: one definite-length map, nothing else.

`decode_map(data)` runs a fresh cbor2 decoder that refuses indefinite lengths, duplicate
map keys, every tag, nesting deeper than `MAX_DEPTH` and any byte after the map, then
checks the value stays in the subset the format uses (maps with text keys, arrays, text,
bytes, integers, booleans, null; no floats, no undefined, no simple values). Anything else
raises `CborError`, which callers turn into the error code of the layer that was being
read (`bad_header` or `bad_manifest`).

`encode_map(value)` writes canonical CBOR (RFC 8949 §4.2.1 core deterministic encoding:
shortest forms, map keys sorted), so a builder given the same inputs writes the same bytes.
Verifiers never re-encode: signatures are checked over the bytes as received.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any

import cbor2

__all__ = ["MAX_DEPTH", "CborError", "decode_map", "encode_map"]

# A manifest is map > files array > entry map > values: 3 deep. Room to spare, no more.
MAX_DEPTH = 6
_SCALARS = frozenset({str, bytes, int, bool, type(None)})


class CborError(ValueError):
    """The bytes are not one map in the allowed CBOR subset."""


class _NoTags(Mapping[int, Any]):
    """cbor2's `semantic_decoders`: every tag number maps to a decoder that refuses it."""

    def __getitem__(self, tag: int) -> Any:
        def refuse(decoder: Any) -> Any:
            raise CborError(f"CBOR tag {tag} is not allowed")

        return refuse

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[int]:
        return iter(())


_NO_TAGS = _NoTags()


def _check_subset(value: Any) -> None:
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise CborError(f"map key of type {type(key).__name__}; keys are text")
            if type(item) not in _SCALARS:
                _check_subset(item)
    elif kind is list:
        for item in value:
            if type(item) not in _SCALARS:
                _check_subset(item)
    elif kind not in _SCALARS:
        raise CborError(f"a CBOR {kind.__name__} is not allowed here")


def decode_map(data: bytes | memoryview) -> dict[str, Any]:
    """Exactly one definite-length map in the allowed subset, or `CborError`."""
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream,
            semantic_decoders=_NO_TAGS,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            max_depth=MAX_DEPTH,
        ).decode()
    except CborError:
        raise
    except (cbor2.CBORError, ValueError, TypeError, RecursionError, OverflowError) as exc:
        # CBORDecodeError wraps most; the rest are belts for cbor2's corner cases.
        raise CborError(f"malformed CBOR ({exc.__class__.__name__}: {exc})") from None
    if type(value) is not dict:
        raise CborError(f"a CBOR {type(value).__name__}, not a map")
    trailing = len(stream.getbuffer()) - stream.tell()
    if trailing:
        raise CborError(f"{trailing} bytes after the map")
    _check_subset(value)
    return value


def encode_map(value: Mapping[str, Any]) -> bytes:
    """Canonical CBOR of a map (deterministic: same value, same bytes)."""
    return cbor2.dumps(dict(value), canonical=True)
