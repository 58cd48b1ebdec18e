"""The client guide's code works as written: docs/bus-client-guide.md's example client is
taken out of the markdown and run, as its own process, against a real appliance; its
golden-frame check is run over `tests/bus/golden_frames.json`.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bus import spec_doc
from tests.bus.test_endpoint import bus_endpoints
from tests.conftest import ApplianceProcess

GUIDE = spec_doc.ROOT / "docs" / "bus-client-guide.md"
PLAIN = {"socket", "sys", "zlib", "cbor2", "json", "bus_example"}  # what the code may import
RUN_TIMEOUT = 60.0


def example(name: str) -> str:
    """The code block that follows `<!-- example: NAME -->` in the guide."""
    found = re.search(
        rf"<!-- example: {re.escape(name)} -->\n```python\n(.*?)\n```", GUIDE.read_text(), re.S
    )
    assert found is not None, f"{GUIDE} has no example {name}"
    return found.group(1) + "\n"


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("guide")
    for name in ("bus_example.py", "check_golden.py"):
        (directory / name).write_text(example(name))
    return directory


@pytest.fixture(scope="module")
def guide_appliance(tmp_path_factory):
    process = ApplianceProcess(tmp_path_factory.mktemp("guide-bus") / "data")
    process.wait_ready()
    yield process
    process.stop()


def run(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


@pytest.mark.parametrize("name", ["bus_example.py", "check_golden.py"])
def test_the_examples_use_only_plain_python_and_cbor2(name: str) -> None:
    tree = ast.parse(example(name))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= PLAIN, imported - PLAIN


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_the_example_publishes_and_reads_its_message_back(
    guide_appliance, examples, transport: str
) -> None:
    unix, tcp = bus_endpoints(guide_appliance)
    target = unix if transport == "unix" else tcp
    name = f"guide-{transport}"
    done = run(examples, "bus_example.py", target, guide_appliance.token, name)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert re.fullmatch(r"welcome: version 1, connection \d+, max_frame 1048576", lines[0])
    assert lines[1] == (
        "deliver: sid 1, topic guide.hello, data b'hello from the guide', "
        f"headers {{'lang': 'python'}}, source {name}, gap 0"
    )
    assert lines[2] == "closed"


def test_the_example_reports_a_refused_token(guide_appliance, examples) -> None:
    unix, _ = bus_endpoints(guide_appliance)
    done = run(examples, "bus_example.py", unix, "apl_000000000000_nope", "guide-refused")
    assert done.returncode == 1
    assert done.stdout.splitlines() == ["refused: code 31: token refused"]


def test_the_golden_check_passes_with_the_example_framing(examples) -> None:
    done = run(examples, "check_golden.py", str(spec_doc.GOLDEN_JSON))
    assert done.returncode == 0, done.stderr
    names = [entry["name"] for entry in spec_doc.golden_entries()]
    assert done.stdout.splitlines() == [
        *(f"ok {name}" for name in names),
        f"all {len(names)} golden frames match",
    ]


def test_the_golden_check_catches_a_wrong_encoder(examples, tmp_path) -> None:
    """The check can fail: with a CRC written little-endian, it stops at the first frame."""
    broken = example("bus_example.py").replace('.to_bytes(4, "big")', '.to_bytes(4, "little")')
    assert broken != example("bus_example.py")
    (tmp_path / "bus_example.py").write_text(broken)
    (tmp_path / "check_golden.py").write_text(example("check_golden.py"))
    done = run(tmp_path, "check_golden.py", str(spec_doc.GOLDEN_JSON))
    assert done.returncode != 0
    assert "hello: encoded differently" in done.stderr
