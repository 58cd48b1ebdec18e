"""What a kernel is: a numba function plus the metadata and checks around it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.kernels.params import validate_params

Outputs = dict[str, Any]  # named outputs: numpy arrays, floats or ints


class InputError(ValueError):
    """The input array does not meet the kernel's rules (dtype, shape, length, NaN)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class InputRules:
    dtypes: tuple[str, ...] = ("float32", "float64")
    min_length: int = 0
    max_length: int = 10_000_000
    allow_nonfinite: bool = True
    nonfinite: str = "NaN and inf propagate into the outputs they touch."

    def describe(self) -> dict[str, Any]:
        return {
            "dtypes": list(self.dtypes),
            "ndim": 1,
            "min_length": self.min_length,
            "max_length": self.max_length,
            "allow_nonfinite": self.allow_nonfinite,
            "nonfinite": self.nonfinite,
        }


@dataclass(frozen=True)
class Kernel:
    """`run(array, params) -> outputs` is the Python wrapper around the jitted function; it
    receives an array that already meets `inputs` and parameters that passed `check_params`
    (defaults filled in, `check` passed), so it does not check them again."""

    name: str
    summary: str
    params: dict[str, Any]
    output: dict[str, str]  # output name -> description
    run: Callable[[np.ndarray, dict[str, Any]], Outputs]
    example: dict[str, Any]  # {"params": {...}, "input": [...]}: docs, tests and warm-up
    inputs: InputRules = field(default_factory=InputRules)
    # Rules between parameters that the schema cannot express; raises ParamError naming
    # the field. Called by `check_params`, so a task breaking them is refused at submission.
    check: Callable[[dict[str, Any]], None] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "params": self.params,
            "input": self.inputs.describe(),
            "output": self.output,
            "example": self.example,
        }

    def check_params(self, params: Any) -> dict[str, Any]:
        """The parameters with defaults filled in, or `ParamError`: the schema, then `check`."""
        checked = validate_params(self.params, params)
        if self.check is not None:
            self.check(checked)
        return checked

    def check_input(self, data: np.ndarray) -> np.ndarray:
        rules = self.inputs
        if data.dtype.name not in rules.dtypes:
            raise InputError(
                "unsupported_dtype",
                f"{self.name} takes {', '.join(rules.dtypes)}, not {data.dtype.name}",
            )
        if data.ndim != 1:
            raise InputError("bad_shape", f"{self.name} takes a 1-D array, not {data.ndim}-D")
        if not rules.min_length <= data.size <= rules.max_length:
            raise InputError(
                "bad_length",
                f"{self.name} takes {rules.min_length}-{rules.max_length} samples, got {data.size}",
            )
        if not rules.allow_nonfinite and data.size and not np.isfinite(data).all():
            raise InputError("nonfinite_input", f"{self.name} does not accept NaN or inf")
        return np.ascontiguousarray(data)

    def __call__(self, data: np.ndarray, params: Any = None) -> Outputs:
        """Check everything, then run. Raises `ParamError` or `InputError` on bad input."""
        checked = self.check_params(params)
        return self.run(self.check_input(data), checked)

    def warm(self) -> None:
        """Compile (or load from numba's cache) every signature this kernel accepts."""
        params = self.check_params(self.example.get("params"))
        for dtype in self.inputs.dtypes:
            self.run(np.asarray(self.example["input"], dtype=dtype), params)
