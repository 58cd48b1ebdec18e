"""The worked example in docs/ota-bundle.md, generated from the code.

The example bundle is built here from fixed inputs (RFC 8032's first test key, one file,
fixed times), and rendered as an annotated CBOR breakdown and a hex dump into the doc
between `<!-- example:begin -->` and `<!-- example:end -->`. Ed25519 signatures are
deterministic, so the bytes are the same on every run; the tests check that the doc holds
exactly what this module renders, so the spec cannot drift from the implementation.

Regenerate after a deliberate format change:  .venv/bin/python -m tests.ota.spec_example --write
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ota import SecretKey
from ota.build import bundle_bytes
from ota.header import PREAMBLE_SIZE

DOC = Path(__file__).resolve().parents[2] / "docs" / "ota-bundle.md"
BEGIN, END = "<!-- example:begin -->", "<!-- example:end -->"

# RFC 8032 §7.1, TEST 1. Never use a published key for anything but examples.
EXAMPLE_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
EXAMPLE_KEY = SecretKey(EXAMPLE_SEED, "example")
EXAMPLE_FILES = {"hello.txt": b"hello\n"}
EXAMPLE_OPTIONS = {
    "product": "example",
    "version": "1.0.0",
    "hardware": ["board-a"],
    "created": 1_700_000_000,
    "expires": 1_700_086_400,
}


def example_bundle() -> bytes:
    return bundle_bytes(EXAMPLE_FILES, keys=[EXAMPLE_KEY], **EXAMPLE_OPTIONS)


def _head(data: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, head length) of the CBOR item at `pos` (definite lengths)."""
    major, info = data[pos] >> 5, data[pos] & 0x1F
    if info < 24:
        return major, info, 1
    width = {24: 1, 25: 2, 26: 4, 27: 8}[info]
    return major, int.from_bytes(data[pos + 1 : pos + 1 + width], "big"), 1 + width


def _line(indent: int, hex_text: str, comment: str) -> str:
    text = f"{'   ' * indent}{hex_text}"
    return f"{text.ljust(52)}# {'  ' * indent}{comment}" if comment else text


def annotate(data: bytes, pos: int = 0, indent: int = 0, out: list[str] | None = None) -> int:
    """Append cbor.me-style annotation lines for the item at `pos`; return the end offset."""
    lines = out if out is not None else []
    major, arg, size = _head(data, pos)
    head = data[pos : pos + size].hex()
    pos += size
    if major == 0:
        lines.append(_line(indent, head, f"unsigned({arg})"))
    elif major in (2, 3):
        body = data[pos : pos + arg]
        kind = "bytes" if major == 2 else "text"
        lines.append(_line(indent, head, f"{kind}({arg})"))
        if major == 3:
            lines.append(_line(indent + 1, body.hex(), f'"{body.decode()}"'))
        else:
            for start in range(0, arg, 16):
                lines.append(_line(indent + 1, body[start : start + 16].hex(), ""))
        pos += arg
    elif major in (4, 5):
        lines.append(_line(indent, head, f"{'array' if major == 4 else 'map'}({arg})"))
        for _ in range(arg * (2 if major == 5 else 1)):
            pos = annotate(data, pos, indent + 1, lines)
    else:
        raise ValueError(f"major type {major} is not used by the format")
    return pos


def hexdump(data: bytes) -> list[str]:
    lines = []
    for offset in range(0, len(data), 16):
        row = data[offset : offset + 16]
        hex_part = (
            " ".join(f"{b:02x}" for b in row[:8]) + "  " + " ".join(f"{b:02x}" for b in row[8:])
        )
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{offset:08x}  {hex_part:<48}  |{text}|")
    return lines


def render() -> str:
    bundle = example_bundle()
    length = int.from_bytes(bundle[15:19], "big")
    header = bundle[PREAMBLE_SIZE : PREAMBLE_SIZE + length]
    payload = bundle[PREAMBLE_SIZE + length :]
    header_lines: list[str] = []
    annotate(header, 0, 0, header_lines)
    # The manifest is a byte string inside the header: annotate its contents separately.
    manifest_start = header.index(b"manifest") + len("manifest")
    _, manifest_length, head = _head(header, manifest_start)
    manifest = header[manifest_start + head : manifest_start + head + manifest_length]
    manifest_lines: list[str] = []
    annotate(manifest, 0, 0, manifest_lines)
    public = EXAMPLE_KEY.public
    parts = [
        "Inputs: the secret key of RFC 8032 §7.1 TEST 1 (seed `"
        + EXAMPLE_SEED.hex()
        + "`, public key `"
        + public.public_key.hex()
        + "`, key id `"
        + public.key_id
        + "`), one file `hello.txt` holding `hello\\n` (mode 0o100644), product `example`,"
        " version `1.0.0`, hardware `board-a`, created 1700000000, expires 1700086400."
        f" The bundle is {len(bundle)} bytes:",
        "",
        "| offset | length | field | bytes |",
        "|---:|---:|---|---|",
        f"| 0 | 14 | magic | `{bundle[:14].hex(' ')}` (`APPLIANCE-OTA\\n`) |",
        f"| 14 | 1 | container version | `{bundle[14:15].hex()}` |",
        f"| 15 | 4 | header length | `{bundle[15:19].hex(' ')}` ({length}) |",
        f"| 19 | {length} | header (CBOR) | below |",
        f"| {19 + length} | {len(payload)} | payload: `hello.txt` | `{payload.hex(' ')}` |",
        "",
        "The header, annotated:",
        "",
        "```text",
        *header_lines,
        "```",
        "",
        f"The manifest: the {manifest_length} bytes of the `manifest` byte string, annotated"
        " (canonical CBOR, so the keys are in length-then-bytewise order):",
        "",
        "```text",
        *manifest_lines,
        "```",
        "",
        "The signature is the Ed25519 signature by the key above of"
        " `APPLIANCE-OTA manifest v1\\n` followed by those manifest bytes. The whole file:",
        "",
        "```text",
        *hexdump(bundle),
        "```",
    ]
    return "\n".join(parts)


def doc_block(text: str) -> str:
    match = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, re.DOTALL)
    if match is None:
        raise ValueError(f"{DOC} has no {BEGIN} ... {END} block")
    return match.group(1)


def write() -> None:
    text = DOC.read_text()
    old = doc_block(text)
    DOC.write_text(text.replace(f"{BEGIN}\n{old}\n{END}", f"{BEGIN}\n{render()}\n{END}"))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(render())
