"""Keeping secrets out of logs: known secret values and credential-looking text become ``***``.

A logging filter on the handlers, so it sees every record that is written, whichever logger made it
(Celery's, requests', ours). Known values are those ``integrations.auth`` resolved in this process;
patterns catch an ``Authorization`` header, a bearer token or an ``api_key=...`` written by anyone else.
"""

from __future__ import annotations

import logging
import re

MASK = "***"
_secrets: set[str] = set()
_PATTERNS = [
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+|basic\s+)?[^\s'\",;}]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"),
    re.compile(
        r"(?i)((?:api[-_]?key|access[-_]?token|refresh[-_]?token|client[-_]?secret|secret|password|token)['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&}]+"
    ),
]


def register_secret(value: str) -> None:
    """Mask ``value`` wherever it appears in a log line of this process."""
    if len(value) >= 4:  # masking "a" everywhere would wreck the logs and protect nothing
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Put the filter on every handler of ``logger`` (the root logger by default), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
