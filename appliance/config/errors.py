"""Errors of the config model: each carries the HTTP status and stable code the API uses."""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """A request the config model refuses. `code` is stable (problem details `code`)."""

    status = 422

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


class NotFound(ConfigError):
    status = 404


class Conflict(ConfigError):
    status = 409


class Gone(ConfigError):
    """A revision the log no longer holds (compacted)."""

    status = 410


class ReadOnly(ConfigError):
    """A write on a replica."""

    status = 409


class FeedError(ConfigError):
    """An upstream feed entry this replica will not apply (order, checksum, shape)."""

    status = 502
