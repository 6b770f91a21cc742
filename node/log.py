"""Structured logging: one ``key=value`` line per event on stderr (journald keeps it).

Use ``log = get_logger(__name__)`` and ``log.info("event_name", key=value, ...)``. Values are
quoted when needed. Never pass secrets (keys, tokens, payloads) as fields.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

_RESERVED = "kv"


def _fmt_value(value: Any) -> str:
    text = value.hex() if isinstance(value, bytes) else str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    """Formats records as ``ts=… level=… logger=… event=… key=value…``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"event={_fmt_value(record.getMessage())}",
        ]
        fields: dict[str, Any] = getattr(record, _RESERVED, {}) or {}
        parts.extend(f"{k}={_fmt_value(v)}" for k, v in fields.items())
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            parts.append(f"error={_fmt_value(f'{type(exc).__name__}: {exc}')}")
        return " ".join(parts)


class Logger:
    """Thin wrapper over a stdlib logger taking structured fields as keyword arguments."""

    __slots__ = ("_log",)

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)

    def _emit(self, level: int, event: str, exc: bool, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, event, exc_info=exc, extra={_RESERVED: fields}, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, False, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, True, fields)


def get_logger(name: str) -> Logger:
    return Logger(name)


def setup(level: str = "info") -> None:
    """Send all logs to stderr in key=value form at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
