"""The HTTP reference: a bare ASGI callable served by hypercorn's trio worker.

    python -m bench.refserver BODY_FILE CONTENT_TYPE URL_FILE

It answers every request with the bytes of BODY_FILE (the appliance's own health document,
captured by the http benchmark) and CONTENT_TYPE, using the appliance's hypercorn settings
(`appliance.api.server.hypercorn_config`) bound to 127.0.0.1:0, and writes its URL to
URL_FILE once it listens. It stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


def make_app(body: bytes, content_type: str) -> Any:
    headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    message = {"type": "http.response.body", "body": body}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send(start)
            await send(message)
        elif scope["type"] == "lifespan":
            while True:
                event = await receive()
                await send({"type": event["type"] + ".complete"})
                if event["type"] == "lifespan.shutdown":
                    return

    return app


def appliance_hypercorn_config() -> Config:
    """The appliance's own hypercorn settings, bound to 127.0.0.1:0."""
    from appliance.api.server import hypercorn_config
    from appliance.settings import Address, HttpSettings, Settings

    return hypercorn_config(Settings(http=HttpSettings(listen=Address("127.0.0.1", 0))))


async def main(body: bytes, content_type: str, url_file: Path) -> None:
    config = appliance_hypercorn_config()
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    shutdown.set()
                    return

        nursery.start_soon(on_signals)
        app = make_app(body, content_type)
        binds = await nursery.start(partial(serve, app, config, shutdown_trigger=shutdown.wait))
        partial_file = url_file.with_suffix(".part")
        partial_file.write_text(binds[0])
        partial_file.rename(url_file)
        await shutdown.wait()
        nursery.cancel_scope.deadline = trio.current_time() + 5


if __name__ == "__main__":
    body_file, content_type, url_file = sys.argv[1:4]
    trio.run(main, Path(body_file).read_bytes(), content_type, Path(url_file))
