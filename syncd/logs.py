"""Logging to stderr: readable text, journald priorities, or JSON lines; secrets redacted.

Under systemd, stderr is a journald stream and ``JOURNAL_STREAM`` names its
``st_dev:st_ino``. Then lines carry no timestamp (journald adds its own) and start
with a ``<N>`` syslog priority, which journald strips and keeps as the entry's level.

Secrets (the upload token) are registered once with ``register_secret`` and replaced
by ``***`` in everything a record carries: message, arguments, extra fields,
exception and stack text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

REDACTED = "***"

# Attributes every LogRecord has; anything else came in through ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class _Secrets:
    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        candidates = {v for v in (value, value.strip()) if v.strip()}
        if not candidates:
            return
        with self._lock:
            self._values |= candidates
            # Longest first, so a secret that contains another is hidden whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered)))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(REDACTED, text)


_secrets = _Secrets()


def register_secret(value: str) -> None:
    """Never log ``value``: it becomes ``***`` in every record. Blank values are ignored."""
    _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    return _secrets.redact(text)


class SecretFilter(logging.Filter):
    """Renders a record's message and exception text with secrets replaced.

    The record is rewritten in place (``args`` are merged into ``msg``, ``exc_info``
    becomes ``exc_text``), so every handler that sees it afterwards sees it clean.
    """

    _exc_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken log call must neither raise nor leak its args
            message = f"{record.msg!r} (unformattable arguments {record.args!r})"
        record.msg = _secrets.redact(message)
        record.args = None
        if record.exc_info:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = _secrets.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = _secrets.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, key, _secrets.redact(value))
        return True


_secret_filter = SecretFilter()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _secrets.redact(super().format(record))


def _syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class _JournalFormatter(_TextFormatter):
    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self._inner.format(record) if self._inner else super().format(record)
        prefix = f"<{_syslog_priority(record.levelno)}>"
        # journald makes one entry per line: each line of a traceback keeps the level.
        return "\n".join(prefix + line for line in text.split("\n"))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        doc: dict[str, Any] = {
            "ts": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": _secrets.redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                doc.setdefault(key, _secrets.redact(value) if isinstance(value, str) else value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = _secrets.redact(record.exc_text)
        if record.stack_info:
            doc["stack"] = _secrets.redact(record.stack_info)
        text = json.dumps(doc, ensure_ascii=False, default=lambda o: _secrets.redact(str(o)))
        return _secrets.redact(text)  # nested values in extra fields


def _is_journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    value = environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    levels = logging.getLevelNamesMapping()
    try:
        return levels[level.strip().upper()]
    except KeyError:
        raise ValueError(f"{level!r} is not a log level (e.g. DEBUG, INFO, WARNING)") from None


_HANDLER_NAME = "syncd"


def setup_logging(
    *,
    level: str | int = "INFO",
    fmt: str = "text",
    stream: TextIO | None = None,
    environ: Mapping[str, str] = os.environ,
) -> logging.Handler:
    """Configures the root logger; calling it again replaces the previous setup.

    ``fmt`` is ``"text"`` or ``"json"``. On a journald stream both get ``<N>``
    priority prefixes and text drops its timestamp. The secret filter is put on every
    handler of the root logger, not only ours.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"{fmt!r} is not a log format (text or json)")
    levelno = _parse_level(level)
    stream = sys.stderr if stream is None else stream

    formatter: logging.Formatter
    if fmt == "json":
        formatter = _JsonFormatter()
        if _is_journal_stream(stream, environ):
            formatter = _JournalFormatter(formatter)
    elif _is_journal_stream(stream, environ):
        formatter = _JournalFormatter()
    else:
        formatter = _TextFormatter("%(asctime)s %(levelname)-8s %(name)s: %(message)s")

    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    for each in root.handlers:
        if _secret_filter not in each.filters:
            each.addFilter(_secret_filter)
    return handler
