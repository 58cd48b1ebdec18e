"""Strict JSON request bodies: a declared shape, unknown fields refused, types checked."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from appliance.api.problems import Problem


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = True
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    min_length: int | None = None
    printable: bool = False
    choices: tuple[Any, ...] | None = None


def parse_json(raw: bytes, content_type: str | None) -> Any:
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise Problem(
            415,
            "unsupported_media_type",
            f"expected application/json, got {media or 'no content type'}",
        )
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise Problem(400, "malformed_json", f"the body is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def validate(document: Any, shape: dict[str, Field]) -> dict[str, Any]:
    """Check `document` against `shape`; collect every error into one 422 problem."""
    if not isinstance(document, dict):
        raise Problem(
            422,
            "validation_failed",
            "the body must be a JSON object",
            errors=[{"field": "", "message": "expected an object"}],
        )
    errors = [{"field": name, "message": "unknown field"} for name in document if name not in shape]
    values: dict[str, Any] = {}
    for name, rule in shape.items():
        if name not in document or document[name] is None:
            if rule.required:
                errors.append({"field": name, "message": "required"})
            continue
        value = document[name]
        message = _check(value, rule)
        if message:
            errors.append({"field": name, "message": message})
        else:
            values[name] = value
    if errors:
        raise Problem(
            422, "validation_failed", "the body does not match the expected shape", errors=errors
        )
    return values


def _check(value: Any, rule: Field) -> str:
    kinds = rule.kind if isinstance(rule.kind, tuple) else (rule.kind,)
    if isinstance(value, bool) and bool not in kinds:
        return f"expected {_names(kinds)}, got a boolean"
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            return "must be finite"
    if not isinstance(value, kinds):
        return f"expected {_names(kinds)}, got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be finite"
    if rule.minimum is not None and value < rule.minimum:
        return f"must be >= {rule.minimum}"
    if rule.maximum is not None and value > rule.maximum:
        return f"must be <= {rule.maximum}"
    if rule.max_length is not None and len(value) > rule.max_length:
        return f"longer than {rule.max_length}"
    if rule.min_length is not None and len(value) < rule.min_length:
        return f"shorter than {rule.min_length}"
    if rule.printable and not value.isprintable():
        return "must be printable"
    if rule.choices is not None and value not in rule.choices:
        return f"must be one of {', '.join(map(str, rule.choices))}"
    return ""


def _names(kinds: tuple[type, ...]) -> str:
    names = {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
        dict: "object",
        list: "array",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)
