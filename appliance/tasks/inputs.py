"""Task input and output encodings (sans-IO): numbers in, NumPy arrays out, and back.

Input is a JSON list of numbers (float64), or `{"dtype", "shape", "data"}` with `data` as
base64 (JSON) or bytes (CBOR), little-endian, C order. Every error is an `InputFormatError`
with a stable code; sizes are checked before anything is allocated.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np

DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}


class InputFormatError(ValueError):
    def __init__(self, code: str, message: str, status: int = 422) -> None:
        self.code = code
        self.status = status
        super().__init__(message)


def parse_input(raw: Any, *, max_samples: int) -> np.ndarray:
    if isinstance(raw, list):
        return _from_list(raw, max_samples)
    if isinstance(raw, dict):
        return _from_typed(raw, max_samples)
    raise InputFormatError(
        "bad_input", 'input must be a list of numbers or {"dtype", "shape", "data"}'
    )


def _from_list(values: list[Any], max_samples: int) -> np.ndarray:
    if len(values) > max_samples:
        raise InputFormatError(
            "input_too_large",
            f"input has {len(values)} samples; the limit is {max_samples}",
            status=413,
        )
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputFormatError("bad_input", f"input[{index}] is not a number")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise InputFormatError("bad_input", f"input[{index}] is out of range")
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        raise InputFormatError("bad_input", "a number in input is out of range") from None


def _from_typed(spec: dict[str, Any], max_samples: int) -> np.ndarray:
    unknown = set(spec) - {"dtype", "shape", "data"}
    if unknown:
        raise InputFormatError("bad_input", f"unknown input fields: {', '.join(sorted(unknown))}")
    dtype_name = spec.get("dtype")
    if dtype_name not in DTYPES:
        raise InputFormatError(
            "unsupported_dtype", f"input dtype must be one of {', '.join(DTYPES)}"
        )
    dtype = DTYPES[dtype_name]
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise InputFormatError("bad_shape", "shape must be a list of 1 or 2 non-negative ints")
    count = math.prod(shape)
    if count > max_samples:
        raise InputFormatError(
            "input_too_large", f"input has {count} samples; the limit is {max_samples}", status=413
        )
    data = spec.get("data")
    if isinstance(data, str):
        expected_chars = 4 * math.ceil(count * dtype.itemsize / 3)
        if len(data) > expected_chars + 4:
            raise InputFormatError("shape_mismatch", "data is longer than the shape says")
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InputFormatError("bad_base64", "data is not valid base64") from None
    if not isinstance(data, bytes | bytearray):
        raise InputFormatError("bad_input", "data must be base64 text (JSON) or bytes (CBOR)")
    if len(data) != count * dtype.itemsize:
        raise InputFormatError(
            "shape_mismatch",
            f"shape {shape} of {dtype_name} needs {count * dtype.itemsize} "
            f"bytes, data has {len(data)}",
        )
    array = np.frombuffer(bytes(data), dtype=dtype).reshape(shape)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """An array as stored and sent in CBOR: dtype, shape, little-endian bytes."""
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": little.tobytes()}


def decode_array(spec: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(spec["dtype"]).newbyteorder("<")
    return np.frombuffer(spec["data"], dtype=dtype).reshape(spec["shape"])


def outputs_to_storable(outputs: dict[str, Any]) -> dict[str, Any]:
    return {
        name: encode_array(value) if isinstance(value, np.ndarray) else value
        for name, value in outputs.items()
    }


def storable_to_json(stored: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or inf: they become null."""
    result: dict[str, Any] = {}
    for name, value in stored.items():
        if isinstance(value, dict) and "dtype" in value:
            result[name] = [_json_number(v) for v in decode_array(value).ravel().tolist()]
        elif isinstance(value, float):
            result[name] = _json_number(value)
        else:
            result[name] = value
    return result


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
