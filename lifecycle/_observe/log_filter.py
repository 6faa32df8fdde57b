"""A logging filter that removes the routes' secrets from the SDKs' and HTTP libraries'
log records.

The engine's own records are redacted where they are made. The SDKs log on their own
loggers: at DEBUG, ``anthropic`` and ``openai`` log each request's options and each
response's headers, and ``httpx``/``httpcore`` (``httpx2``/``httpcore2`` on the current
stack) log the requests they send; a provider that echoes a key in a header, or a
factory's custom header, then reaches the application's log handlers. The filter goes
on a *handler* (``handler.addFilter(SecretsFilter())``): a filter on a logger sees only
the records of that exact logger, not of its children (``openai._base_client``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .._core.redaction import redact

__all__ = ["SDK_LOGGERS", "SecretsFilter"]

SDK_LOGGERS = ("anthropic", "openai", "httpx", "httpx2", "httpcore", "httpcore2")


class SecretsFilter(logging.Filter):
    """Redacts (never drops) the records of ``loggers`` and their children: the message
    with its arguments, the formatted traceback and the stack, with the routes' known
    secrets and key-shaped strings removed as in the engine's own records.
    ``loggers=None`` redacts every record the handler gets."""

    def __init__(self, loggers: Iterable[str] | None = SDK_LOGGERS) -> None:
        super().__init__()
        self.loggers = None if loggers is None else tuple(loggers)

    def covers(self, name: str) -> bool:
        if self.loggers is None:
            return True
        return any(name == logger or name.startswith(logger + ".") for logger in self.loggers)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.covers(record.name):
            return True
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse a record's exc_text: formatted once here, redacted.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
