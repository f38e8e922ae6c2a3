"""JSON logs: one object per line, with the request's id, route and session when there is one.

`configure()` is idempotent (gunicorn workers, tests and the CLI all call it). Request context
is carried in a ContextVar so records from any module in the request pick it up.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

request_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "request_context", default=None
)

_HANDLER_NAME = "session-manager-json"
# Anything that looks like a credential is masked before a line is written: keys, tokens and
# passwords must never reach logs even if some library puts them into a message.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"(?i)((?:api[_-]?key|token|password|requirepass)[\"']?\s*[:=]\s*[\"']?)[^\s\"',]+"),
    re.compile(r"(redis(?:s)?://[^:@/\s]*:)[^@/\s]+(@)"),
]


# A word every secret pattern contains: most lines have none and skip the regexes.
_SECRET_MARKERS = ("bearer", "key", "token", "pass", "redis")


def redact(text: str) -> str:
    lowered = text.lower()
    if not any(marker in lowered for marker in _SECRET_MARKERS):
        return text
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***" + (m.group(2) if m.lastindex and
                                                            m.lastindex > 1 else ""), text)
    return text


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (request_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class _Formatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def make_handler(stream: Any) -> logging.Handler:
    """A handler writing our JSON lines (with request context and redaction) to `stream`."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Formatter(
        "{levelname}{name}{message}", style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,  # ISO-8601 UTC
    ))
    handler.addFilter(_ContextFilter())
    return handler


def configure(level: str = "INFO", stream: Any = None) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if handler.get_name() == _HANDLER_NAME:
            handler.setLevel(level)
            return
    handler = make_handler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    root.addHandler(handler)
    for noisy in ("urllib3", "kubernetes", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
