"""docs/ota-bundle.md's worked example is what the code builds, and it verifies."""

from __future__ import annotations

import re

from ota import TrustRoot
from tests.ota import spec_example
from tests.ota.craft import check_bytes


def test_the_doc_holds_exactly_the_rendered_example() -> None:
    block = spec_example.doc_block(spec_example.DOC.read_text())
    assert block == spec_example.render(), (
        "docs/ota-bundle.md is stale: run .venv/bin/python -m tests.ota.spec_example --write"
    )


def test_the_hexdump_in_the_doc_is_a_bundle_that_verifies() -> None:
    block = spec_example.doc_block(spec_example.DOC.read_text())
    rows = re.findall(r"^[0-9a-f]{8}  ((?:[0-9a-f]{2} {1,2})+)", block, re.MULTILINE)
    bundle = bytes.fromhex("".join(rows))
    assert bundle == spec_example.example_bundle()
    trust_root = TrustRoot((spec_example.EXAMPLE_KEY.public,))
    manifest, files = check_bytes(
        bundle,
        trust_root,
        now=1_700_000_000,
        product="example",
        hardware="board-a",
        installed_version="0.9.0",
    )
    assert files == {"hello.txt": b"hello\n"}
    assert manifest.files[0].mode == 0o100644
