"""Logging to stderr: journald's form under systemd, a human form in a terminal.

Under systemd (`$JOURNAL_STREAM` names our stderr) each line starts with a `<N>` syslog
priority and carries no timestamp, because journald adds its own. Elsewhere lines carry a
local time and the level name.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # Continuation lines keep the priority so journald files a traceback as one level.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """True when `$JOURNAL_STREAM` (`device:inode`) is the stream behind our stderr."""
    value = (environ if environ is not None else os.environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stat.st_dev == int(device) and stat.st_ino == int(inode)


def configure_logging(level: str, *, journal: bool | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if journal if journal is not None else stderr_is_journal():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVELS[level])
    # hypercorn's own loggers follow ours; its access log stays off (we count requests).
    logging.getLogger("hypercorn.error").setLevel(max(LEVELS[level], logging.INFO))
