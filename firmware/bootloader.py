"""Boot environments: the variables a bootloader reads to pick a slot.

`BootEnvironment` is the interface a backend implements: `load()` every variable,
`store(variables)` the whole set atomically; `update(changes)` is a read-modify-write
built on those two (None deletes a variable). Backends:

- `GrubEnvFile`: GRUB's 1024-byte `grubenv` block (`firmware.grubenv`), written whole to a
  temp file and renamed over the old one. GRUB reads it with `load_env`.
- `MemoryBootEnvironment`: a dict, for tests and for boxes without a bootloader to tell.

A U-Boot backend would implement the same two methods over `fw_printenv`/`fw_setenv`
(or the raw redundant environment with its CRC and flags byte); docs/firmware.md says how.

The slot manager is the source of truth and mirrors its state one way into a boot
environment with `boot_variables(state)`; the other variables (GRUB's `saved_entry`,
`next_entry`, ...) are kept as they are.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path

from firmware.durable import write_atomic
from firmware.errors import BootEnvError
from firmware.grubenv import decode_grubenv, encode_grubenv
from firmware.state import BootState

__all__ = [
    "BOOT_VARIABLES",
    "BootEnvironment",
    "GrubEnvFile",
    "MemoryBootEnvironment",
    "boot_variables",
]

# The variables the slot manager owns, and what each means to a bootloader script.
BOOT_VARIABLES = {
    "boot_slot": "the slot to boot: a or b (empty before the first install)",
    "good_slot": "the last known good slot, to boot when boot_slot fails",
    "upgrade_available": "1 while boot_slot is on trial, else 0",
    "boot_tries_left": "starts left before the trial slot is given up",
}


def boot_variables(state: BootState) -> dict[str, str]:
    return {
        "boot_slot": state.current or "",
        "good_slot": state.good or "",
        "upgrade_available": "1" if state.pending is not None else "0",
        "boot_tries_left": str(state.tries_left),
    }


class BootEnvironment(abc.ABC):
    """A set of string variables a bootloader reads at boot."""

    @abc.abstractmethod
    def load(self) -> dict[str, str]:
        """Every variable (empty if the environment does not exist yet)."""

    @abc.abstractmethod
    def store(self, variables: Mapping[str, str]) -> None:
        """Replace every variable at once: after a crash, the old set or the new one."""

    def update(self, changes: Mapping[str, str | None]) -> dict[str, str]:
        """Set (or with None delete) some variables, keep the rest; returns the new set.
        Writes nothing when nothing changes."""
        current = self.load()
        merged = dict(current)
        for name, value in changes.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        if merged != current:
            self.store(merged)
        return merged


class GrubEnvFile(BootEnvironment):
    """A `grubenv` file, e.g. /boot/grub/grubenv."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"GrubEnvFile({str(self.path)!r})"

    def load(self) -> dict[str, str]:
        try:
            block = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise BootEnvError("bootenv_io", f"cannot read {self.path}: {exc}") from None
        return decode_grubenv(block)

    def store(self, variables: Mapping[str, str]) -> None:
        block = encode_grubenv(variables)  # refuses what does not fit before writing
        try:
            write_atomic(self.path, block)
        except OSError as exc:
            raise BootEnvError("bootenv_io", f"cannot write {self.path}: {exc}") from None


class MemoryBootEnvironment(BootEnvironment):
    """Variables in memory; `writes` counts the stores (a test double we own)."""

    def __init__(self, variables: Mapping[str, str] | None = None) -> None:
        self.variables = dict(variables or {})
        self.writes = 0

    def load(self) -> dict[str, str]:
        return dict(self.variables)

    def store(self, variables: Mapping[str, str]) -> None:
        self.variables = dict(variables)
        self.writes += 1
