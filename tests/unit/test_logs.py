"""The worker's log lines (``tasks.logs``): one JSON object per line, and Celery's own lines about an
operation task without its payload, its result or its exception's message.

Celery's trace lines are made here as ``celery.app.trace`` makes them (its format strings, its dict of
values), after the task concluded through ``tasks.operations.conclude``.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery, Task
from celery.app.trace import LOG_FAILURE, LOG_RETRY, LOG_SUCCESS
from celery.exceptions import Retry as CeleryRetry
from kombu.utils.encoding import safe_repr

from integrations.errors import ErrorInfo, ErrorType, OperationFailed
from integrations.ledger.models import OperationStatus
from integrations.outcome import Defer, Done, Failed, Retry, WaitReason
from tasks.logs import TRACE_LOGGER, CeleryTraceFilter, JsonFormatter
from tasks.operations import conclude, register_operation

NAME = "integrations.logtest.request"
CANARY = "4000123412341234"  # a card number in the payload, and echoed in the provider's answer
KWARGS = {"payload": {"json": {"card_number": CANARY}}, "idempotency_key": "order-1", "request_id": "rq-1"}

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def task() -> Task:
    app = Celery("logtest", set_as_current=False)
    register_operation(app, "logtest", "request", NAME, lease=10.0)
    return app.tasks[NAME]


@pytest.fixture
def lines() -> Iterator[Lines]:
    """The JSON lines written by the trace logger and ``integrations.logtest``, through the filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    trace_filter = CeleryTraceFilter()
    loggers = [logging.getLogger(TRACE_LOGGER), logging.getLogger("integrations.logtest")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    loggers[0].addFilter(trace_filter)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    loggers[0].removeFilter(trace_filter)
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def concluded_with(task: Task, task_id: str, outcome: Any) -> Any:
    """What ``conclude`` returned or raised for ``outcome``, as the pool process runs it."""
    task.push_request(id=task_id, kwargs=KWARGS, retries=0, called_directly=False, is_eager=True)
    try:
        return conclude(task, outcome)
    except Exception as exc:  # the retry, or the operation's failure
        return exc
    finally:
        task.pop_request()


def test_a_json_line_holds_the_record_and_the_attempts_fields(lines: Lines) -> None:
    context = {
        "request_id": "rq-1",
        "idempotency_key": "order-1",
        "provider": "acme",
        "operation": "request",
        "attempt": 2,
        "outcome": "succeeded",
        "duration_ms": 12.5,
        "payload": {"card_number": CANARY},  # not one of the fields: never written
    }
    logging.getLogger("integrations.logtest").info("two\nlines, one €", extra={"context": context})
    logging.getLogger("integrations.logtest").warning("no attempt here")
    with_context, plain = lines()
    assert with_context.pop("time").endswith("+00:00")
    assert with_context == {
        "level": "INFO",
        "logger": "integrations.logtest",
        "message": "two\nlines, one €",
        **{key: value for key, value in context.items() if key != "payload"},
    }
    assert plain.keys() == {"time", "level", "logger", "message"}


def test_a_json_line_holds_the_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert json.loads(text)["exception"].endswith("ValueError: bad")


def test_a_succeeded_line_shows_the_summary_not_the_result(task: Task, lines: Lines) -> None:
    result = {"status": "succeeded", "attempts": 1, "replayed": False, "response": {"card_number": CANARY}}
    assert concluded_with(task, "t-1", Done(result)) == result
    values = {
        "id": "t-1",
        "name": NAME,
        "return_value": safe_repr(result),
        "runtime": 0.0123,
        "args": "()",
        "kwargs": safe_repr(KWARGS),
    }
    logging.getLogger(TRACE_LOGGER).info(LOG_SUCCESS, values, extra={"data": values})
    [line] = lines()
    assert CANARY not in json.dumps(line)
    assert line["message"] == (
        f"Task {NAME}[t-1] succeeded in 0.0123s: {{'outcome': 'succeeded', 'attempts': 1, 'provider': "
        "'logtest', 'operation': 'request', 'idempotency_key': 'order-1', 'request_id': 'rq-1', "
        "'redeliveries': 0}"
    )
    assert {
        key: line[key] for key in ("provider", "idempotency_key", "attempt", "outcome", "duration_ms")
    } == {
        "provider": "logtest",
        "idempotency_key": "order-1",
        "attempt": 1,
        "outcome": "succeeded",
        "duration_ms": 12.3,
    }


def test_a_failed_line_shows_the_error_type_not_the_message(task: Task, lines: Lines) -> None:
    error = ErrorInfo(type=ErrorType.PROVIDER_REJECTED, message=f"card {CANARY} declined")
    raised = concluded_with(task, "t-2", Failed(OperationStatus.FAILED, error))
    assert isinstance(raised, OperationFailed) and str(raised).startswith("provider_rejected: ")
    values = {
        "hostname": "w@h",
        "id": "t-2",
        "name": NAME,
        "exc": safe_repr(raised),
        "traceback": f"Traceback ...\nOperationFailed: {raised}",
        "args": "()",
        "kwargs": safe_repr(KWARGS),
        "description": "raised expected",
        "internal": False,
    }
    record = logging.getLogger(TRACE_LOGGER).makeRecord(
        TRACE_LOGGER, logging.INFO, __file__, 1, LOG_FAILURE, (values,), None, extra={"data": values}
    )
    logging.getLogger(TRACE_LOGGER).handle(record)
    [line] = lines()
    assert line["message"] == f"Task {NAME}[t-2] raised expected: OperationFailed('provider_rejected')"
    assert (line["outcome"], CANARY in repr(record.__dict__["data"])) == ("failed", False)


@pytest.mark.parametrize(
    ("outcome", "reason", "logged"),
    [
        (Defer(1.5, WaitReason.THROTTLED), "Deferred('throttled')", "throttled"),
        (
            Retry(2.0, ErrorInfo(type=ErrorType.TIMEOUT, message=f"no answer for {CANARY}")),
            "AttemptFailed('timeout')",
            "retry",
        ),
    ],
)
def test_a_message_put_back_says_why_and_carries_the_summary(
    task: Task, lines: Lines, outcome: Any, reason: str, logged: str
) -> None:
    retry = concluded_with(task, "t-3", outcome)
    assert isinstance(retry, CeleryRetry)
    assert (repr(retry.exc), retry.when) == (reason, outcome.delay)
    # The message sent back: its kwargsrepr header (and task-sent event) is the summary.
    assert retry.sig.options["kwargsrepr"] == (
        "{'provider': 'logtest', 'operation': 'request', 'idempotency_key': 'order-1', 'request_id': 'rq-1', "
        "'redeliveries': 1}"
    )
    logging.getLogger(TRACE_LOGGER).info(LOG_RETRY, {"id": "t-3", "name": NAME, "exc": str(retry)})
    [line] = lines()
    assert (line["message"], line["outcome"]) == (f"Task {NAME}[t-3] retry: {reason}", logged)


def test_an_unexpected_exception_keeps_its_frames_not_its_message(lines: Lines) -> None:
    def charge(payload: dict[str, str]) -> None:
        raise KeyError(payload["card_number"])

    try:
        charge({"card_number": CANARY})
    except KeyError as exc:
        values = {"id": "t-4", "name": NAME, "exc": safe_repr(exc), "description": "raised unexpected"}
        logging.getLogger(TRACE_LOGGER).error(
            "Task %(name)s[%(id)s] %(description)s: %(exc)s", values, exc_info=True
        )
    [line] = lines()
    assert CANARY not in json.dumps(line)
    assert line["message"] == f"Task {NAME}[t-4] raised unexpected: KeyError (message not shown)"
    assert 'raise KeyError(payload["card_number"])' in line["exception"]
    assert line["exception"].endswith("KeyError (message not shown)")


def test_other_tasks_lines_are_left_as_celery_writes_them(lines: Lines) -> None:
    values = {"id": "t-5", "name": "integrations.maintenance.sweep", "return_value": "3", "runtime": 0.5}
    logging.getLogger(TRACE_LOGGER).info(LOG_SUCCESS, values)
    [line] = lines()
    assert line["message"] == "Task integrations.maintenance.sweep[t-5] succeeded in 0.5s: 3"
