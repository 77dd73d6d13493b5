"""The worker's log lines: secrets masked, Celery's lines about an operation task without its payload, result
or exception message, written as text or as one JSON object per line (``INTEGRATIONS_LOG_FORMAT``).

The standard library's ``logging``, not structlog: every line of a worker comes from a standard library logger
(Celery's, requests', the core's) that Celery configures, so a formatter and a filter on those loggers are
the whole job; structlog would add a dependency and a second pipeline for records it does not make.

``install`` is connected to Celery's ``after_setup_logger`` and ``after_setup_task_logger`` signals
(``tasks.registry``); ``configure`` chooses the format first.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

from celery import current_task
from celery.utils.log import get_multiprocessing_logger

from integrations.redaction import install as install_redaction
from tasks.operations import concluded, is_operation

LogFormat = Literal["text", "json"]

# The fields of an attempt's log records (their ``context`` attribute) that a JSON line carries, in order.
CONTEXT_FIELDS = (
    "request_id",
    "idempotency_key",
    "provider",
    "operation",
    "attempt",
    "outcome",
    "duration_ms",
)

# Celery's "Task ... succeeded in ...: <result>" and its lines of a retry and a failure.
TRACE_LOGGER = "celery.app.trace"

_format: LogFormat = "text"


def configure(log_format: LogFormat) -> None:
    """The format ``install`` gives the handlers Celery sets up."""
    global _format
    _format = log_format


def install(logger: logging.Logger | None = None, **_: Any) -> None:
    """Set up ``logger``'s handlers (the root logger by default) as Celery just made them: mask secrets,
    write JSON if so configured, and keep payloads, results and exception messages out of Celery's
    lines about operation tasks. Idempotent."""
    logger = logger or logging.getLogger()
    install_redaction(logger)
    trace = logging.getLogger(TRACE_LOGGER)
    if not any(isinstance(f, CeleryTraceFilter) for f in trace.filters):
        trace.addFilter(CeleryTraceFilter())
    if _format == "json":
        loggers = [logger]
        if logger is logging.getLogger():  # Celery configures billiard's pool logger beside the root
            loggers.append(get_multiprocessing_logger())
        for each in filter(None, loggers):
            for handler in each.handlers:
                handler.setFormatter(JsonFormatter())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``; the
    attempt's fields when the record has them (``CONTEXT_FIELDS`` of its ``context``); ``task_id`` and
    ``task_name`` inside a task; ``exception`` with the traceback. Non-ASCII is escaped, so a line never
    holds a character that a reader could take for a line break."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = getattr(record, "context", None)
        if isinstance(context, Mapping):
            line.update((key, context[key]) for key in CONTEXT_FIELDS if context.get(key) is not None)
        if current_task and current_task.request.id is not None:
            line["task_id"], line["task_name"] = current_task.request.id, current_task.name
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str)


class CeleryTraceFilter(logging.Filter):
    """On Celery's trace logger: a line about an operation task shows what the task concluded
    (``tasks.operations.concluded``: the outcome, the wait reason or the error type) in place of its result
    and exception, its summary in place of its args and kwargs, and a traceback without the exception's
    message; in JSON, with the operation's fields. Celery's other tasks' lines are left as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = record.args
        if not isinstance(data, Mapping) or not is_operation(data.get("name")):
            return True
        noted = concluded(str(data.get("id")))
        shown = dict(data)
        if "return_value" in shown:
            shown["return_value"] = noted.shown if noted else "(result not shown)"
        if "exc" in shown:
            shown["exc"] = noted.shown if noted else _type_only(str(shown["exc"]))
        if "traceback" in shown:
            shown["traceback"] = ""
        for key in ("args", "kwargs"):
            if key in shown:
                shown[key] = noted.summary.text() if noted and key == "kwargs" else "(not shown)"
        record.args = shown
        if hasattr(record, "data"):  # Celery passes the same values as `extra` for custom handlers
            record.data = shown
        if record.exc_info:
            record.exc_text, record.exc_info = _frames_only(*record.exc_info), None
        if noted is not None:
            runtime = shown.get("runtime")
            duration = round(runtime * 1000, 1) if isinstance(runtime, int | float) else None
            record.context = noted.context(duration_ms=duration)
        return True


_EXCEPTION_TYPE = re.compile(r"[A-Za-z_][\w.]*")


def _type_only(text: str) -> str:
    """An exception's repr (``KeyError('…')``) cut to its type."""
    match = _EXCEPTION_TYPE.match(text)
    return f"{match.group(0) if match else 'an exception'} (message not shown)"


def _frames_only(
    kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
) -> str:
    """A traceback's frames (file, line, code) without the exception's message."""
    frames = "".join(traceback.format_tb(tb))
    name = kind.__qualname__ if kind is not None else type(exc).__qualname__
    return f"Traceback (most recent call last):\n{frames}{name} (message not shown)"
