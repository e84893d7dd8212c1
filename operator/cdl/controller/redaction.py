"""Secrets never reach logs: every Secret value the operator reads is masked in log records."""

from __future__ import annotations

import logging
import threading

_values: set[str] = set()
_lock = threading.Lock()
MASK = "***"


def redact_value(value: str) -> None:
    """Remember a secret value so it is masked wherever it would be logged."""
    if value and len(value) >= 4:
        with _lock:
            _values.add(value)


def redact(text: str) -> str:
    with _lock:
        values = sorted(_values, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def install() -> None:
    """Attach the filter to every handler of the root logger (and future records through it)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
