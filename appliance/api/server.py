"""Serve the app with hypercorn inside the caller's nursery.

`serve_http` reports the bound URLs through `task_status.started`, stops accepting when
`shutdown` is set, and gives in-flight requests `graceful_timeout_s` to finish.
"""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from appliance.settings import Settings

log = logging.getLogger(__name__)


def hypercorn_config(settings: Settings) -> Config:
    http = settings.http
    config = Config()
    config.bind = [str(http.listen)]
    config.graceful_timeout = http.graceful_timeout_s
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 30
    config.h11_max_incomplete_size = 16 * 1024  # request line + headers
    config.backlog = 1024
    if http.tls_cert is not None:
        config.certfile = str(http.tls_cert)
        config.keyfile = str(http.tls_key) if http.tls_key else None
    return config


async def serve_http(
    app,
    settings: Settings,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    config = hypercorn_config(settings)
    await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
