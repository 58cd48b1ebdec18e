"""Application trees for the slot tests: what an installer writes, and how to check it.

The bytes of every file follow from the version, so `verify_tree` can tell a complete
install of that version from a torn or mixed one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from firmware import SlotManager

PAYLOAD_BYTES = 256 * 1024


def payload(version: str, size: int = PAYLOAD_BYTES) -> bytes:
    seed = hashlib.sha256(version.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def expected_files(version: str) -> dict[str, bytes]:
    return {
        "VERSION": f"{version}\n".encode(),
        "bin/app": f"#!/bin/sh\necho appliance {version}\n".encode(),
        "lib/payload.bin": payload(version),
        "lib/small/config.json": f'{{"version": "{version}"}}\n'.encode(),
    }


def write_tree(directory: Path, version: str) -> None:
    for name, data in expected_files(version).items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def verify_tree(directory: Path, version: str) -> None:
    """Raise AssertionError unless `directory` holds exactly the tree of `version`."""
    expected = expected_files(version)
    found = {
        str(path.relative_to(directory)): path.read_bytes()
        for path in directory.rglob("*")
        if path.is_file()
    }
    assert sorted(found) == sorted(expected), f"{directory}: files {sorted(found)}"
    for name, data in expected.items():
        assert found[name] == data, f"{directory}/{name} is not version {version}'s"


def install(manager: SlotManager, version: str) -> str:
    """Install `version` into the inactive slot the way the OTA installer does."""
    slot = manager.inactive_slot()
    write_tree(manager.staging_dir(slot), version)
    manager.mark_complete(slot, version)
    return slot


def first_install(manager: SlotManager, version: str = "1.0.0") -> str:
    manager.root.mkdir(parents=True, exist_ok=True)
    slot = install(manager, version)
    manager.adopt(slot, version)
    return slot
