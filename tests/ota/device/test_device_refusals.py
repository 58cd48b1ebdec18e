"""Every bad bundle of issue 6, pushed to a real appliance over HTTP: the precise code in
the problem, in the job and in `ota push`'s output and exit status, and nothing changed on
the box (both slots' files, the boot state down to its sequence number, the ledger).

One appliance serves the whole module; the box trusts keys A and B with a threshold of 2,
takes bundles of at most 64 KiB, and cuts off a sender silent for 1 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest

from ota.cli import main as ota_main
from ota.signatures import MANIFEST_CONTEXT, sign
from tests.api.conftest import check_problem
from tests.ota import craft
from tests.ota.device.box import KEY_A, KEY_B, OUTSIDER, Box

LIMIT = 64 * 1024
BOTH = (KEY_A, KEY_B)


def doc(**overrides: Any) -> dict:
    now = int(time.time())
    fields = {"created": now - 3600, "expires": now + 30 * 86400, "version": "2.0.0"}
    fields.update(overrides)
    return craft.manifest_doc(**fields)


def bundle(document: dict | None = None, **options: Any) -> bytes:
    options.setdefault("keys", BOTH)
    return craft.make_bundle(document or doc(), **options)


def with_files(files: dict[str, tuple[bytes, int]]) -> bytes:
    entries = [craft.entry(path, data, mode) for path, (data, mode) in files.items()]
    document = doc(files=entries, total_size=sum(len(data) for data, _ in files.values()))
    return craft.make_bundle(document, keys=BOTH, payload=b"".join(d for d, _ in files.values()))


def tampered_manifest() -> bytes:
    signed = cbor2.dumps(doc(), canonical=True)
    changed = doc()
    changed["hardware"] = ["*"]
    return craft.make_bundle(changed, signatures=sign(MANIFEST_CONTEXT, signed, BOTH))


def flipped_payload() -> bytes:
    data = bytearray(bundle())
    data[-100] ^= 0x01
    return bytes(data)


def oversized() -> bytes:
    big = {"big.bin": (bytes(range(256)) * 1024, 0o100644)}  # 256 KiB > LIMIT
    return with_files(big)


# name -> (bundle, code, HTTP status)
CASES: dict[str, tuple[Callable[[], bytes], str, int]] = {
    "not a bundle": (lambda: b"PK\x03\x04 a zip file, say" * 10, "bad_magic", 422),
    "unsigned": (lambda: bundle(keys=()), "unsigned", 422),
    "unknown key": (lambda: bundle(keys=(OUTSIDER,)), "unknown_key", 422),
    "below threshold": (lambda: bundle(keys=(KEY_A,)), "below_threshold", 422),
    "manifest changed after signing": (tampered_manifest, "bad_signature", 422),
    "payload byte changed": (flipped_payload, "payload_hash_mismatch", 422),
    "payload truncated": (lambda: bundle()[:-7], "truncated", 422),
    "trailing data": (lambda: bundle() + b"extra", "trailing_data", 422),
    "sizes disagree": (
        lambda: bundle(doc(total_size=doc()["total_size"] + 1)),
        "size_mismatch",
        422,
    ),
    "larger than the limit": (oversized, "too_large", 413),
    "wrong product": (lambda: bundle(doc(product="other-box")), "wrong_product", 422),
    "wrong hardware": (
        lambda: bundle(doc(hardware=["board-z"])),
        "incompatible_hardware",
        422,
    ),
    "same version": (lambda: bundle(doc(version="1.0.0")), "not_newer", 422),
    "older version": (lambda: bundle(doc(version="0.9.9")), "not_newer", 422),
    "expired": (
        lambda: bundle(doc(created=int(time.time()) - 9 * 86400, expires=int(time.time()) - 60)),
        "expired",
        422,
    ),
    "path with ..": (
        lambda: with_files({"bin/../../etc/passwd": (b"x", 0o100644)}),
        "bad_path",
        422,
    ),
    "absolute path": (lambda: with_files({"/etc/passwd": (b"x", 0o100644)}), "bad_path", 422),
    "duplicate path": (
        lambda: craft.make_bundle(
            doc(files=[craft.entry("a", b"1"), craft.entry("a", b"2")], total_size=2),
            keys=BOTH,
            payload=b"12",
        ),
        "bad_path",
        422,
    ),
    "symlink": (lambda: with_files({"lib/link": (b"/etc", 0o120777)}), "bad_mode", 422),
    "device": (lambda: with_files({"dev/sda": (b"", 0o060644)}), "bad_mode", 422),
}


@dataclass
class World:
    box: Box
    url: str
    token: str

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/octet-stream",
        }

    def seen(self) -> dict[str, Any]:
        """The box's files and boot state, and the ledger as the API reports it."""
        status = httpx.get(f"{self.url}/api/v1/ota/status", headers=self.headers(), timeout=10)
        assert status.status_code == 200, status.text
        body = status.json()
        ledger = {key: body[key] for key in ("floor", "denylist", "time_high_water")}
        return {**self.box.snapshot(), "ledger": ledger}

    def last_job(self) -> dict[str, Any]:
        status = httpx.get(f"{self.url}/api/v1/ota/status", headers=self.headers(), timeout=10)
        return status.json()["last_job"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    box = Box(
        tmp_path_factory.mktemp("refusals") / "box",
        keys=BOTH,
        threshold=2,
        ota_max_bundle_bytes=str(LIMIT),
        ota_stall_timeout_s="1",
    )
    process = box.start(from_slot=False)
    yield World(box, process.url, process.token)
    process.stop()


def push(world: World, data: bytes, tmp_path: Path, capsys) -> tuple[int, str]:
    """`ota push FILE --box URL` (its `main`, in this process: the box is the real one)."""
    path = tmp_path / "bundle.ota"
    path.write_bytes(data)
    capsys.readouterr()
    code = ota_main(["push", str(path), "--box", world.url, "--token", world.token])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_bundle_gets_its_code_everywhere_and_changes_nothing(world, tmp_path, capsys, name):
    make, code, status = CASES[name]
    data = make()
    before = world.seen()

    exit_status, output = push(world, data, tmp_path, capsys)
    assert exit_status == 1, output
    assert f"refused: {code}:" in output, output
    assert "0 of 1 boxes updated" in output
    job = world.last_job()
    assert (job["state"], job["code"]) == ("failed", code)
    assert world.seen() == before

    response = httpx.post(
        f"{world.url}/api/v1/ota/bundles", content=data, headers=world.headers(), timeout=30
    )
    body = check_problem(response, status, code)
    assert body["job"]["state"] == "failed" and body["job"]["code"] == code
    assert world.last_job()["id"] == body["job"]["id"]
    assert world.seen() == before


def test_an_upload_over_the_limit_is_cut_off_before_it_is_stored(world):
    """Without a Content-Length the box counts: it stops at the limit, never at the end."""
    data = oversized()
    before = world.seen()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 4096):
            yield data[start : start + 4096]

    response = httpx.post(
        f"{world.url}/api/v1/ota/bundles", content=chunks(), headers=world.headers(), timeout=30
    )
    body = check_problem(response, 413, "too_large")
    assert body["job"]["progress"]["bytes_received"] <= LIMIT + 4096 < len(data)
    assert world.seen() == before


def test_a_content_length_over_the_limit_is_refused_before_a_byte_is_read(world):
    response = httpx.post(
        f"{world.url}/api/v1/ota/bundles",
        content=oversized(),
        headers=world.headers(),
        timeout=30,
    )
    body = check_problem(response, 413, "too_large")
    assert body["job"]["progress"]["bytes_received"] == 0


def test_an_endless_upload_is_cut_off_as_soon_as_it_passes_the_declared_size(world):
    data = bundle()
    before = world.seen()
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        yield data
        sent += len(data)
        while True:
            yield b"\0" * 4096
            sent += 4096

    response = httpx.post(
        f"{world.url}/api/v1/ota/bundles", content=endless(), headers=world.headers(), timeout=30
    )
    body = check_problem(response, 422, "trailing_data")
    assert body["job"]["progress"]["bytes_received"] <= len(data) + 4096
    assert world.seen() == before


def test_a_stalled_sender_is_cut_off_by_the_timeout(world):
    data = bundle()
    before = world.seen()

    def stalls() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        time.sleep(3)  # the box's stall timeout is 1 s
        yield data[len(data) // 2 :]

    try:
        response = httpx.post(
            f"{world.url}/api/v1/ota/bundles", content=stalls(), headers=world.headers(), timeout=30
        )
    except httpx.HTTPError:
        response = None  # the box may close before the sender wakes up: the job tells
    if response is not None:
        check_problem(response, 408, "stalled")
    job = world.last_job()
    assert (job["state"], job["code"]) == ("failed", "stalled")
    assert job["progress"]["bytes_received"] == len(data) // 2
    assert world.seen() == before


def test_a_chunked_upload_that_ends_early_is_truncated(world):
    data = bundle()
    before = world.seen()
    response = httpx.post(
        f"{world.url}/api/v1/ota/bundles",
        content=iter([data[:-3]]),
        headers=world.headers(),
        timeout=30,
    )
    check_problem(response, 422, "truncated")
    assert world.seen() == before


def test_an_install_needs_the_admin_role_and_a_bundle_media_type(world):
    with httpx.Client(base_url=world.url, timeout=10) as http:
        created = http.post(
            "/api/v1/auth/tokens",
            json={"name": "ota-operator", "role": "operator"},
            headers={"Authorization": f"Bearer {world.token}"},
        )
        operator = created.json()["token"]
        refused = http.post(
            "/api/v1/ota/bundles",
            content=bundle(),
            headers={**world.headers(), "Authorization": f"Bearer {operator}"},
        )
        check_problem(refused, 403, "forbidden")
        wrong_type = http.post(
            "/api/v1/ota/bundles",
            content=bundle(),
            headers={**world.headers(), "Content-Type": "application/json"},
        )
        check_problem(wrong_type, 415, "unsupported_media_type")
        missing = http.get("/api/v1/ota/jobs/nope", headers=world.headers())
        check_problem(missing, 404, "job_not_found")
        nothing = http.post("/api/v1/ota/commit", headers=world.headers())
        check_problem(nothing, 409, "no_pending")
        no_fallback = http.post("/api/v1/ota/rollback", headers=world.headers())
        check_problem(no_fallback, 409, "no_fallback")


def test_a_late_mismatch_in_a_large_bundle_fails_and_changes_nothing(make_box):
    """The box hashes a batch while it writes the one before: a file that turns out bad
    12 MiB in, after three files were written whole (the writer is at most three batches
    of about 1 MiB behind the hasher), still fails with its code, counts only those three,
    and leaves both slots, the boot state and the ledger as they were."""
    box = make_box(ota_max_bundle_bytes=str(32 << 20))
    process = box.start(from_slot=False)
    world = World(box, process.url, process.token)
    files = {f"lib/part-{index}.bin": (bytes([index]) * (2 << 20), 0o100644) for index in range(3)}
    files["share/late.bin"] = (bytes(range(256)) * (24 << 10), 0o100755)  # 6 MiB
    entries = [craft.entry(path, data, mode) for path, (data, mode) in files.items()]
    document = doc(files=entries, total_size=sum(len(data) for data, _ in files.values()))
    payload = b"".join(data for data, _ in files.values())
    data = craft.make_bundle(
        document, keys=(KEY_A,), payload=payload[:-1] + bytes([payload[-1] ^ 1])
    )
    before = world.seen()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 64 << 10):
            yield data[start : start + (64 << 10)]

    response = httpx.post(
        f"{world.url}/api/v1/ota/bundles",
        content=chunks(),
        headers={**world.headers(), "Content-Length": str(len(data))},
        timeout=60,
    )
    body = check_problem(response, 422, "payload_hash_mismatch")
    assert "share/late.bin" in body["detail"]
    job = body["job"]
    assert (job["state"], job["code"]) == ("failed", "payload_hash_mismatch")
    assert job["progress"]["files_done"] == 3
    assert world.last_job()["id"] == job["id"]
    assert world.seen() == before
    assert list((box.root / "b").iterdir()) == []
    process.stop()
