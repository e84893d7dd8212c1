"""Secrets never reach logs, Events or status: every Secret value the operator reads is masked.

Log records are masked by a filter on the root logger's handlers and on kopf's `kopf.objects`
logger, whose own handler posts records as Events (it is not below the root handlers, so the
root filter never saw them). The Events and status the reconcilers write go through
`redact` / `redact_data` in the controller."""

from __future__ import annotations

import logging
import threading
from typing import Any

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


def redact_data(value: Any) -> Any:
    """`value` (a status patch, say) with every secret masked in its strings."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_data(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:  # the traceback's text is formatted from this
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install() -> None:
    """Attach the filter to every handler of the root logger, and to kopf's `kopf.objects` logger
    (whose Event poster is a handler of its own)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, RedactingFilter) for f in objects.filters):
        objects.addFilter(RedactingFilter())
