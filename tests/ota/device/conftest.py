"""Fixtures of the device-side OTA tests: boxes that are cleaned up, and the appliance trees
(the running version and the bundles' newer ones), built once per module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ota.device.box import OLD, Box, appliance_tree, build_tree_bundle


@pytest.fixture
def make_box(tmp_path: Path) -> Iterator[Callable[..., Box]]:
    boxes: list[Box] = []

    def make(**options) -> Box:
        box = Box(tmp_path / f"box{len(boxes)}", **options)
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.close()


@dataclass(frozen=True)
class Trees:
    old: Path  # the appliance as version OLD, for slot a
    bundles: Path

    def bundle(self, version: str, *, crash: bool = False, filler: int = 0) -> Path:
        """A signed bundle of the appliance as `version` (crashing at import with
        `crash`; with a `filler` file of that many bytes); built once per module."""
        name = f"{version}{'-crash' if crash else ''}-{filler}"
        out = self.bundles / f"{name}.ota"
        if not out.exists():
            tree = appliance_tree(self.bundles / name, version, crash=crash)
            if filler:
                (tree / "filler.bin").write_bytes(bytes(range(256)) * (filler // 256))
            build_tree_bundle(tree, out, version)
        return out


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> Trees:
    base = tmp_path_factory.mktemp("trees")
    (base / "bundles").mkdir()
    return Trees(appliance_tree(base / "old", OLD), base / "bundles")
