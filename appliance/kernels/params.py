"""Kernel parameters: a small, strict JSON-schema subset, validated with precise errors.

Supported per property: `type` (number, integer, boolean, string, array), `minimum`,
`maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `enum`, `default`, `items` (for arrays
of numbers: `type`, `minItems`, `maxItems`), `description`. Unknown parameters are
refused. The same schema is served by `GET /api/v1/kernels/{name}`, so clients can check
before sending.
"""

from __future__ import annotations

import math
from typing import Any


class ParamError(ValueError):
    """Parameters that do not match a kernel's schema; `errors` names each field."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))


def schema(properties: dict[str, dict[str, Any]], required: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": list(required),
    }


def number(
    minimum=None,
    maximum=None,
    *,
    default=None,
    exclusive_minimum=None,
    exclusive_maximum=None,
    description: str = "",
    integer: bool = False,
) -> dict:
    prop: dict[str, Any] = {"type": "integer" if integer else "number"}
    for key, value in (
        ("minimum", minimum),
        ("maximum", maximum),
        ("exclusiveMinimum", exclusive_minimum),
        ("exclusiveMaximum", exclusive_maximum),
        ("default", default),
    ):
        if value is not None:
            prop[key] = value
    if description:
        prop["description"] = description
    return prop


def integer(minimum=None, maximum=None, **options) -> dict:
    return number(minimum, maximum, integer=True, **options)


def boolean(default: bool | None = None, description: str = "") -> dict:
    prop: dict[str, Any] = {"type": "boolean"}
    if default is not None:
        prop["default"] = default
    if description:
        prop["description"] = description
    return prop


def choice(*values: str, default: str | None = None, description: str = "") -> dict:
    prop: dict[str, Any] = {"type": "string", "enum": list(values)}
    if default is not None:
        prop["default"] = default
    if description:
        prop["description"] = description
    return prop


def number_array(
    min_items: int = 0, max_items: int = 4096, *, default=None, description: str = ""
) -> dict:
    prop: dict[str, Any] = {
        "type": "array",
        "items": {"type": "number"},
        "minItems": min_items,
        "maxItems": max_items,
    }
    if default is not None:
        prop["default"] = default
    if description:
        prop["description"] = description
    return prop


def validate_params(spec: dict, given: Any) -> dict[str, Any]:
    """Return the parameters with defaults filled in, or raise `ParamError`."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ParamError([{"field": "params", "message": "expected an object"}])
    properties = spec["properties"]
    errors = [
        {"field": f"params.{name}", "message": "unknown parameter"}
        for name in given
        if name not in properties
    ]
    values: dict[str, Any] = {}
    for name, prop in properties.items():
        field = f"params.{name}"
        if name not in given:
            if name in spec.get("required", ()):
                errors.append({"field": field, "message": "required"})
            elif "default" in prop:
                values[name] = prop["default"]
            continue
        message, value = _check(prop, given[name])
        if message:
            errors.append({"field": field, "message": message})
        else:
            values[name] = value
    if errors:
        raise ParamError(errors)
    return values


def _check(prop: dict, value: Any) -> tuple[str, Any]:
    kind = prop["type"]
    if kind == "array":
        if not isinstance(value, list):
            return "expected an array", None
        if not prop.get("minItems", 0) <= len(value) <= prop.get("maxItems", 1 << 30):
            return f"expected {prop.get('minItems', 0)}-{prop.get('maxItems')} items", None
        checked = []
        for index, item in enumerate(value):
            message, item = _check(prop["items"], item)
            if message:
                return f"item {index}: {message}", None
            checked.append(item)
        return "", checked
    if kind == "boolean":
        return ("", value) if isinstance(value, bool) else ("expected true or false", None)
    if kind == "string":
        if not isinstance(value, str):
            return "expected a string", None
        if "enum" in prop and value not in prop["enum"]:
            return f"must be one of {', '.join(prop['enum'])}", None
        return "", value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected {'an integer' if kind == 'integer' else 'a number'}", None
    if kind == "integer":
        if isinstance(value, float):
            if not value.is_integer():
                return "expected an integer", None
            value = int(value)
    else:
        try:
            value = float(value)
        except OverflowError:
            return "must be finite", None
        if not math.isfinite(value):
            return "must be finite", None
    if "minimum" in prop and value < prop["minimum"]:
        return f"must be >= {prop['minimum']}", None
    if "maximum" in prop and value > prop["maximum"]:
        return f"must be <= {prop['maximum']}", None
    if "exclusiveMinimum" in prop and value <= prop["exclusiveMinimum"]:
        return f"must be > {prop['exclusiveMinimum']}", None
    if "exclusiveMaximum" in prop and value >= prop["exclusiveMaximum"]:
        return f"must be < {prop['exclusiveMaximum']}", None
    return "", value
