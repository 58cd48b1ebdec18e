"""A stream receiver in its own process, for the kill-and-resume test.

    python -m tests.bus.stream_receiver BUS TOKEN NAME OUT LOG

Connects as node NAME, accepts one stream and writes each chunk into OUT at the chunk's
offset (so a chunk delivered again after a restart lands where it was), then appends
`chunk OFFSET LENGTH` to LOG, flushed, after the chunk is written: what the process had
processed when it was killed is on disk, in that order. The first line is
`start OFFSET`; the last `end` once the stream is complete.
"""

from __future__ import annotations

import os
import sys

import trio

from appliance.bus.client import open_client

CHUNK = 16384  # small chunks: many release points to be killed between


async def main(bus: str, token: str, name: str, out: str, log_path: str) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    with open(log_path, "a", buffering=1) as log:  # noqa: ASYNC230 - a test helper
        async with open_client(bus, token, name=name) as client:
            with trio.fail_after(60):
                reader = await client.accept_stream()
            log.write(f"start {reader.start_offset}\n")
            while (chunk := await reader.receive(CHUNK)) is not None:
                os.pwrite(fd, chunk.data, chunk.offset)
                log.write(f"chunk {chunk.offset} {len(chunk.data)}\n")
                await trio.sleep(0.002)  # a receiver slower than its sender
            log.write("end\n")
    os.close(fd)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:6])
