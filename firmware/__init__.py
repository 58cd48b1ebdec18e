"""A/B slots on the box: install trees side by side, boot counting, commit and rollback.

`SlotManager` (directory backend, `firmware.slots`) is the API: `staging_dir` and
`mark_complete` for the installer, `mark_pending` to switch `current` to a new install,
`on_start` first thing at every start (uses a try, or rolls back), `commit` once healthy,
`rollback` by hand, `status`. The state machine is `firmware.transitions` (pure), the
stored record `firmware.record` (sans-IO), boot environments `firmware.bootloader` with
GRUB's `grubenv` (`firmware.grubenv`). The design is in docs/firmware.md.
"""

from firmware.bootloader import (
    BootEnvironment,
    GrubEnvFile,
    MemoryBootEnvironment,
    boot_variables,
)
from firmware.errors import (
    BadArgument,
    BootEnvError,
    Busy,
    FirmwareError,
    GrubEnvError,
    NoRoot,
    Refused,
    StateError,
)
from firmware.grubenv import decode_grubenv, encode_grubenv
from firmware.slots import DEFAULT_TRIES, RESTART_INTO_OTHER_SLOT, SlotManager, StartReport
from firmware.state import SLOTS, BootState, FailedVersion, Phase
from firmware.status import SlotInfo, Status
from firmware.transitions import StartAction

__all__ = [
    "DEFAULT_TRIES",
    "RESTART_INTO_OTHER_SLOT",
    "SLOTS",
    "BadArgument",
    "BootEnvError",
    "BootEnvironment",
    "BootState",
    "Busy",
    "FailedVersion",
    "FirmwareError",
    "GrubEnvError",
    "GrubEnvFile",
    "MemoryBootEnvironment",
    "NoRoot",
    "Phase",
    "Refused",
    "SlotInfo",
    "SlotManager",
    "StartAction",
    "StartReport",
    "StateError",
    "Status",
    "boot_variables",
    "decode_grubenv",
    "encode_grubenv",
]
