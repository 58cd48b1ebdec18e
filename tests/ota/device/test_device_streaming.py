"""The streaming parts of an install without a server: `receive_bundle` fed chunks split
anywhere, the staging writer, the upload limits, the stall timeout on trio's virtual
clock, the pacing of a Quart body, and the wait of a version on trial."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from appliance.ota.errors import OtaRefused
from appliance.ota.installer import UploadStream, receive_bundle
from appliance.ota.pacing import PacedBody
from appliance.ota.policy import DevicePolicy
from appliance.ota.staging import StagingWriter
from appliance.ota.trial import until_healthy
from ota import ErrorCode, HeaderReader, OtaError
from tests.ota import craft


def policy(limit: int = 1 << 20) -> DevicePolicy:
    return DevicePolicy(
        trust_root=craft.root(),
        product=craft.PRODUCT,
        hardware=craft.HARDWARE,
        installed_version="1.0.0",
        floor=None,
        denylist=frozenset(),
        clock=float(craft.NOW),
        time_high_water=0,
        max_bundle_size=limit,
    )


async def chunks_of(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        await trio.lowlevel.checkpoint()
        yield piece


class Recorder:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.events: list[str] = []
        self.received = 0
        self.files = 0

    async def header_read(self) -> None:
        self.events.append("header")

    async def verified(self, manifest, size) -> Path:
        self.events.append(f"verified {manifest.version} {size}")
        self.directory.mkdir()
        return self.directory

    async def receive(self, pieces, *, content_length=None, limit=1 << 20, stall=30.0) -> object:
        stream = UploadStream(
            chunks_of(pieces),
            limit=limit,
            stall_timeout=stall,
            on_bytes=lambda count: setattr(self, "received", count),
        )
        return await receive_bundle(
            stream,
            policy(limit),
            content_length=content_length,
            header_read=self.header_read,
            verified=self.verified,
            on_files=lambda done: setattr(self, "files", done),
        )


@pytest.mark.parametrize("cuts", [[], [1], [19, 20, 21], list(range(0, 5000, 7))])
async def test_a_bundle_split_anywhere_lands_whole_with_its_modes(tmp_path, cuts):
    data = craft.make_bundle()
    recorder = Recorder(tmp_path / "slot")
    received = await recorder.receive(craft.split(data, cuts), content_length=len(data))
    assert str(received.manifest.version) == "2.0.0"
    assert recorder.events == ["header", f"verified 2.0.0 {len(data)}"]
    assert (recorder.received, recorder.files) == (len(data), len(craft.FILES))
    for path, (content, mode) in craft.FILES.items():
        written = tmp_path / "slot" / path
        assert written.read_bytes() == content
        assert stat.S_IMODE(written.stat().st_mode) == mode & 0o777


async def test_a_changed_payload_byte_is_refused_at_the_end_of_its_file(tmp_path):
    data = bytearray(craft.make_bundle())
    data[-1] ^= 1  # the last byte of the last file
    recorder = Recorder(tmp_path / "slot")
    with pytest.raises(OtaError) as refused:
        await recorder.receive([bytes(data)])
    assert refused.value.code is ErrorCode.PAYLOAD_HASH_MISMATCH
    assert "'README'" in refused.value.detail  # the caller then throws the slot away


def late_mismatch_bundle() -> tuple[bytes, dict[str, tuple[bytes, int]], str]:
    """Three files of 1.5 MiB, then one of 6 MiB whose last byte differs from the signed
    one: the mismatch is known 10.5 MiB in, while the files before it were written long ago
    (the writer is at most three batches of about 1 MiB behind the hasher)."""
    good = {
        f"lib/part-{index}.bin": (bytes([index]) * (3 << 19), 0o100644 | (index & 1) * 0o111)
        for index in range(3)
    }
    late = bytes(range(256)) * (24 << 10)
    signed = {**good, "share/late.bin": (late, 0o100644)}
    payload = b"".join(data for data, _ in signed.values())
    flipped = payload[:-1] + bytes([payload[-1] ^ 1])
    return craft.make_bundle(craft.manifest_doc(signed), payload=flipped), good, "share/late.bin"


async def test_a_late_mismatch_fails_with_its_code_after_the_earlier_files_were_written(
    tmp_path,
):
    data, good, late = late_mismatch_bundle()
    recorder = Recorder(tmp_path / "slot")
    with pytest.raises(OtaError) as refused:
        await recorder.receive(craft.split(data, range(0, len(data), 64 << 10)), limit=len(data))
    assert refused.value.code is ErrorCode.PAYLOAD_HASH_MISMATCH
    assert repr(late) in refused.value.detail
    # the pipeline wrote the files before it whole, hashed and with their modes, and
    # counted exactly those: the failed file was never finished
    assert recorder.files == len(good)
    for path, (content, mode) in good.items():
        written = tmp_path / "slot" / path
        assert written.read_bytes() == content
        assert stat.S_IMODE(written.stat().st_mode) == mode & 0o777
    bad = tmp_path / "slot" / late
    if bad.exists():  # partly written, never finished: still the writer's private 0600
        assert stat.S_IMODE(bad.stat().st_mode) == 0o600


async def test_a_mutable_chunk_is_hashed_and_written_as_it_was_when_it_came(tmp_path):
    """The writer writes a batch after the hasher is done with it: a caller that reuses a
    mutable buffer meanwhile must not change what lands on disk."""
    content = bytes(range(256)) * 64
    header = HeaderReader()
    header.feed(craft.make_bundle(craft.manifest_doc({"f": (content, 0o100644)})))
    assert header.header is not None
    manifest = policy().check(header.header)
    (tmp_path / "slot").mkdir()
    writer = StagingWriter(tmp_path / "slot", manifest)
    buffer = bytearray(content)
    events = writer.hash([buffer, memoryview(buffer)[:0]])
    buffer[:] = bytes(len(buffer))  # reused before the write
    try:
        writer.write(events)
        writer.write(writer.finish_hash())
    finally:
        writer.close()
    assert (tmp_path / "slot" / "f").read_bytes() == content
    assert writer.files_done == 1


async def test_nothing_is_staged_before_the_header_passed(tmp_path):
    recorder = Recorder(tmp_path / "slot")
    with pytest.raises(OtaError) as refused:
        await recorder.receive([craft.make_bundle(keys=(craft.OUTSIDER,))])
    assert refused.value.code is ErrorCode.UNKNOWN_KEY
    assert recorder.events == ["header"]
    assert not (tmp_path / "slot").exists()


@pytest.mark.parametrize(
    ("delta", "code"), [(-1, ErrorCode.TRUNCATED), (1, ErrorCode.TRAILING_DATA)]
)
async def test_a_content_length_that_disagrees_is_refused_before_the_payload(tmp_path, delta, code):
    data = craft.make_bundle()
    recorder = Recorder(tmp_path / "slot")
    with pytest.raises(OtaError) as refused:
        await recorder.receive([data], content_length=len(data) + delta)
    assert refused.value.code is code
    assert recorder.events == ["header"]


async def test_the_limit_counts_what_arrives_before_the_header_says_a_size(tmp_path):
    recorder = Recorder(tmp_path / "slot")
    with pytest.raises(OtaError) as refused:
        await recorder.receive([b"APPLIANCE-OTA\n\x01"] + [b"\0" * 100] * 3, limit=300)
    # the header length (0) is refused as soon as its four bytes are in
    assert refused.value.code is ErrorCode.BAD_HEADER
    with pytest.raises(OtaError) as refused:
        await recorder.receive([craft.make_bundle()], limit=200)
    assert refused.value.code is ErrorCode.TOO_LARGE
    assert recorder.received <= len(craft.make_bundle())


async def test_an_endless_upload_ends_at_the_first_byte_past_the_declared_size(tmp_path):
    data = craft.make_bundle()
    recorder = Recorder(tmp_path / "slot")

    async def endless() -> AsyncIterator[bytes]:
        yield data
        while True:
            await trio.lowlevel.checkpoint()
            yield b"\0" * 10

    stream = UploadStream(endless(), limit=1 << 20, stall_timeout=30, on_bytes=lambda c: None)
    with pytest.raises(OtaError) as refused:
        await receive_bundle(
            stream,
            policy(),
            content_length=None,
            header_read=recorder.header_read,
            verified=recorder.verified,
            on_files=lambda done: None,
        )
    assert refused.value.code is ErrorCode.TRAILING_DATA
    assert stream.received == len(data) + 10


async def test_a_sender_that_stalls_is_cut_off_at_the_timeout_exactly(tmp_path, autojump_clock):
    data = craft.make_bundle()

    async def stalls() -> AsyncIterator[bytes]:
        yield data[:100]
        await trio.sleep_forever()
        yield b""  # never reached

    stream = UploadStream(stalls(), limit=1 << 20, stall_timeout=7.5, on_bytes=lambda c: None)
    recorder = Recorder(tmp_path / "slot")
    began = trio.current_time()
    with pytest.raises(OtaRefused) as refused:
        await receive_bundle(
            stream,
            policy(),
            content_length=None,
            header_read=recorder.header_read,
            verified=recorder.verified,
            on_files=lambda done: None,
        )
    assert (refused.value.status, refused.value.code) == (408, "stalled")
    assert trio.current_time() - began == 7.5
    assert stream.received == 100


async def test_the_staging_writer_never_follows_a_link_planted_in_the_slot(tmp_path):
    data = craft.make_bundle()
    slot = tmp_path / "slot"
    outside = tmp_path / "outside"
    outside.mkdir()

    async def verified(manifest, size) -> Path:
        slot.mkdir()
        os.symlink(outside, slot / "bin")  # as if something raced the installer
        return slot

    stream = UploadStream(
        chunks_of([data]), limit=1 << 20, stall_timeout=30, on_bytes=lambda c: None
    )
    with pytest.raises(OSError):
        await receive_bundle(
            stream,
            policy(),
            content_length=None,
            header_read=Recorder(slot).header_read,
            verified=verified,
            on_files=lambda done: None,
        )
    assert list(outside.iterdir()) == []


async def test_a_paced_body_lets_one_message_through_per_grant(autojump_clock):
    messages = [
        {"type": "http.request", "body": b"a", "more_body": True},
        {"type": "http.request", "body": b"b", "more_body": True},
        {"type": "http.request", "body": b"c", "more_body": False},
        {"type": "http.disconnect"},
    ]
    served = []

    async def receive() -> dict:
        served.append(messages[len(served)])
        return served[-1]

    paced = PacedBody(receive)
    assert (await paced.receive())["body"] == b"a"
    with trio.move_on_after(1) as blocked:
        await paced.receive()
    assert blocked.cancelled_caught and len(served) == 1  # no grant, no read
    paced.grant()
    paced.grant()  # grants do not pile up: one message per grant, at most one ahead
    assert (await paced.receive())["body"] == b"b"
    with trio.move_on_after(1) as blocked:
        await paced.receive()
    assert blocked.cancelled_caught and len(served) == 2
    paced.grant()
    assert (await paced.receive())["more_body"] is False
    assert (await paced.receive())["type"] == "http.disconnect"  # the body is done: open


class Flaky:
    """A health snapshot that is ok except at the virtual times listed in `bad`."""

    def __init__(self, bad: set[float]) -> None:
        self.bad = bad

    def __call__(self) -> dict:
        return {"status": "degraded" if trio.current_time() in self.bad else "ok"}


async def test_a_trial_commits_after_an_unbroken_healthy_run(autojump_clock):
    began = trio.current_time()
    assert await until_healthy(Flaky(set()), healthy_s=10, timeout_s=60)
    assert trio.current_time() - began == 10
    began = trio.current_time()
    # one bad answer at +3 s restarts the run: ok again from +4 s, so done at +14 s
    assert await until_healthy(Flaky({began + 3}), healthy_s=10, timeout_s=60)
    assert trio.current_time() - began == 14


async def test_a_trial_never_healthy_long_enough_gives_up_at_the_timeout(autojump_clock):
    began = trio.current_time()
    bad = {began + 9.0 * k for k in range(1, 20)}  # a blip every 9 s
    assert not await until_healthy(Flaky(bad), healthy_s=10, timeout_s=60)
    assert trio.current_time() - began == 60
