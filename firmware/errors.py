"""Every error the firmware package raises, each with a stable `code`.

    FirmwareError                  code: str, message: str
    ├── StateError                 stored boot state bytes are bad (the disk sent garbage)
    │                              codes: state_magic, state_truncated, state_too_large,
    │                              state_checksum, state_json, state_field, state_corrupt
    ├── BootEnvError               a boot environment cannot be read or stored: bootenv_io
    │   └── GrubEnvError           codes: grubenv_size, grubenv_header, grubenv_line,
    │                              grubenv_truncated, grubenv_padding, grubenv_encoding,
    │                              grubenv_duplicate, grubenv_name, grubenv_value,
    │                              grubenv_too_large
    ├── Refused                    the boot state does not allow this now (we misused it):
    │                              no_pending, not_initialized, already_initialized,
    │                              update_pending, no_fallback, slot_in_use, slot_incomplete,
    │                              version_mismatch, version_denied
    ├── BadArgument                a value handed in is invalid: bad_slot, bad_version,
    │                              bad_tries, bad_reason
    ├── Busy                       another process holds the state lock past the timeout
    └── NoRoot                     the slot root directory does not exist

The CLI maps these to exit codes in one place (`firmware.cli`); the appliance maps them to
problem details. A refused operation changes nothing on disk; a failed `mark_pending`,
`commit`, `rollback` or `adopt` puts back what it wrote (`SlotManager._save_or_undo`),
unless that fails too, which its error's note then says.
"""

from __future__ import annotations


class FirmwareError(Exception):
    """Base class: a precise `code` for programs and a `message` for people."""

    code: str = "firmware_error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class StateError(FirmwareError):
    """The stored boot state could not be decoded (torn, corrupt or foreign bytes)."""


class BootEnvError(FirmwareError):
    """A boot environment could not be read or written."""


class GrubEnvError(BootEnvError):
    """A GRUB environment block is malformed, or a variable cannot be stored in one."""


class Refused(FirmwareError):
    """The operation is not allowed in the current boot state."""


class BadArgument(FirmwareError):
    """A slot name, version, try count or reason handed in is invalid."""


class Busy(FirmwareError):
    """Another process held the state lock for longer than the timeout."""


class NoRoot(FirmwareError):
    """The slot root directory does not exist."""
