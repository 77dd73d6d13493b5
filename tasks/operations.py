"""One Celery task per (provider, operation): runs a delivery through the core and maps the Outcome.

Done -> the task's return value; Retry and Defer -> ``self.retry(countdown=...)`` (the message goes back
to its queue and the worker slot is free meanwhile); Failed -> ``OperationFailed`` (Celery FAILURE).

Outside the ledger and the caller's result, a message is told by its ``Summary`` (provider, operation,
idempotency key, request id, redeliveries) and its outcome, never by its payload or the provider's answer:
in Celery's task events (what Flower shows), in the worker's answers to ``inspect``, in the retried
message's headers and in Celery's own log lines (``tasks.logs``). A message put back is in the RETRY state
with ``Deferred(<wait reason>)`` when it used no attempt, ``AttemptFailed(<error type>)`` after an attempt
that failed in a way worth another try.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from billiard.einfo import ExceptionWithTraceback  # type: ignore[import-untyped]
from celery import Celery, Task
from celery.exceptions import Reject
from celery.exceptions import Retry as CeleryRetry
from celery.worker.request import Request
from celery.worker.state import task_ready

from integrations.errors import ErrorType, OperationFailed
from integrations.ledger.models import MAX_KEY_LENGTH
from integrations.message import Delivery
from integrations.outcome import Defer, Done, Outcome, Retry
from integrations.runtime import Runtime

log = logging.getLogger("integrations.worker")

_runtime: Runtime | None = None
_runtime_factory: Callable[[], Runtime] | None = None


def configure_runtime(factory: Callable[[], Runtime]) -> None:
    global _runtime_factory
    _runtime_factory = factory


def runtime() -> Runtime:
    """This process's runtime, rebuilt after a fork (prefork children get their own)."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        if _runtime_factory is None:
            raise RuntimeError("tasks.operations.configure_runtime() was not called")
        _runtime = _runtime_factory()
    return _runtime


class Deferred(Exception):
    """The reason of the RETRY state of a message put back without using an attempt: ``args[0]`` is the
    wait reason (``throttled``, ``breaker_open``, ``in_flight``, ...; ``integrations.outcome.WaitReason``)."""


class AttemptFailed(Exception):
    """The reason of the RETRY state of a message put back after its attempt failed in a way worth another
    try: ``args[0]`` is the error type (``provider_unavailable``, ``timeout``, ...; ``ErrorType``)."""


@dataclass(frozen=True)
class Summary:
    """A message as it is shown outside the ledger: what it asks for, never its payload."""

    provider: str
    operation: str
    idempotency_key: str | None
    request_id: str | None
    redeliveries: int

    @classmethod
    def of(cls, provider: str, operation: str, kwargs: Any, redeliveries: int | None = 0) -> Summary:
        """The summary of a message with these kwargs (as sent: they may be anything)."""
        fields = kwargs if isinstance(kwargs, Mapping) else {}
        return cls(
            provider,
            operation,
            _shown(fields.get("idempotency_key")),
            _shown(fields.get("request_id")),
            redeliveries or 0,
        )

    @classmethod
    def of_task(cls, name: str, kwargs: Any, redeliveries: int | None) -> Summary | None:
        """The summary of a message of the task ``name``; ``None`` when it is no operation task."""
        if name not in _operations:
            return None
        return cls.of(*_operations[name], kwargs, redeliveries)

    def fields(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "provider": self.provider,
            "operation": self.operation,
            "idempotency_key": self.idempotency_key,
        }
        if self.request_id is not None:
            shown["request_id"] = self.request_id
        shown["redeliveries"] = self.redeliveries
        return shown

    def text(self, **outcome: Any) -> str:
        """As a Python dict's repr, where Celery puts a task's kwargs or result (Flower searches such a
        kwargs field by key: ``kwargs:idempotency_key=order-8812``)."""
        return repr(outcome | self.fields())


def _shown(value: Any) -> str | None:
    """A key or request id as shown: as sent, cut to the longest valid one; another type by its name."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    return value if len(value) <= MAX_KEY_LENGTH else value[:MAX_KEY_LENGTH] + "…"


def _args_text(args: Any) -> str:
    return "()" if not args else f"(<{len(args)} positional arguments, not shown>)"


# The start of the repr of a task result (integrations.strategies.result): its status comes first.
_RESULT_STATUS = re.compile(r"\{'status': '([a-z_]+)'")


_ERROR_TYPES = frozenset(kind.value for kind in ErrorType)


def exception_text(exc: BaseException) -> str:
    """An exception as an operation task's events and log lines show it: its type, and for our own the
    error type or wait reason they carry; never a message, which could hold the payload or the answer.
    A Celery ``Retry`` is shown by its reason (``Deferred`` or ``AttemptFailed``)."""
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    if isinstance(exc, CeleryRetry) and isinstance(exc.exc, BaseException):
        exc = exc.exc
    if isinstance(exc, Deferred | AttemptFailed):
        return f"{type(exc).__name__}({str(exc.args[0]) if exc.args else ''!r})"
    if isinstance(exc, OperationFailed):
        kind = str(exc).split(":", 1)[0]
        return f"OperationFailed({kind if kind in _ERROR_TYPES else ''!r})"
    return f"{type(exc).__name__} (message not shown)"


class OperationRequest(Request):  # type: ignore[misc]
    """A delivery as the worker's main process tracks it.

    An operation task killed by its hard time limit (only a process hung beyond the attempt's own deadline
    meets it, or one still waiting for Redis to store its result: ``result_backend_always_retry``) is not
    recorded as failed: its outcome is the ledger's, and its message goes back to the queue, whose next
    delivery finds the operation in the ledger (ended, or with a lease that runs out) and reports that.

    Its events and ``inspect`` answers show the message's ``Summary`` for its args and kwargs (the
    ``kwargsrepr`` header is what the sender wrote, the whole payload for ``send_task``), the outcome for
    the result, and ``exception_text`` without a traceback for an exception."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._summary = Summary.of_task(self._type, self._kwargs, self._request_dict.get("retries"))
        self._exception_shown: str | None = None
        if self._summary is not None:
            # Read by the task-received event and Celery's log lines, here and in the pool process.
            self._argsrepr = self._request_dict["argsrepr"] = _args_text(self._args)
            self._kwargsrepr = self._request_dict["kwargsrepr"] = self._summary.text()

    def info(self, safe: bool = False) -> dict[str, Any]:
        # inspect's `scheduled` and `reserved` (Flower's worker page) ask for the args themselves.
        return super().info(safe=safe or self._summary is not None)  # type: ignore[no-any-return]

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        self._exception_shown = exception_text(exc_info.exception)
        super().on_failure(exc_info, send_failed_event, return_ok)

    def send_event(self, type: str, **fields: Any) -> None:
        if not (self._eventer and self._eventer.enabled and self.task.send_events):
            return  # as Celery's own does: nobody asked for events (the summary is not worth making)
        if self._summary is not None:
            if type == "task-succeeded":
                status = _RESULT_STATUS.match(str(fields.get("result", "")))
                fields["result"] = self._summary.text(outcome=status.group(1) if status else "done")
            elif type in ("task-failed", "task-retried"):
                fields["exception"] = self._exception_shown or "(not shown)"
                fields["traceback"] = ""
        super().send_event(type, **fields)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if soft:
            super().on_timeout(soft, timeout)
            return
        task_ready(self)
        log.error(
            "hard time limit (%ss) exceeded for %s[%s]: the process was killed; the message goes back to "
            "its queue and the ledger's outcome is reported at its next delivery",
            timeout,
            self.name,
            self.id,
        )
        self.reject(requeue=True)


class OperationTask(Task):  # type: ignore[misc]
    Request = OperationRequest
    acks_late = True
    max_retries = None  # attempts are counted in the ledger; a deferral must not use them up
    throws = (OperationFailed,)  # an expected failure: logged in one line, without a traceback
    acks_on_timeout = False  # a task killed by its hard time limit goes back to the queue
    typing = False  # the core validates kwargs, so a bad message is recorded as invalid_request
    # Celery writes the result's repr for its events and log line, which show the outcome in its place
    # (OperationRequest, tasks.logs): only its start, where the status is, is read.
    resultrepr_maxsize = 64


@dataclass(frozen=True)
class Concluded:
    """How a pool process's task ended a delivery, for Celery's log line about it (``tasks.logs``)."""

    task_id: str
    summary: Summary
    outcome: str  # the status (succeeded, partial, failed, dead), the wait reason, "retry" or "requeued"
    shown: str  # in place of the result or the exception in Celery's log line
    attempt: int | None = None

    def context(self, duration_ms: float | None = None) -> dict[str, Any]:
        """The fields of a JSON log line (``INTEGRATIONS_LOG_FORMAT=json``), as the core's records have them."""
        return {
            "provider": self.summary.provider,
            "operation": self.summary.operation,
            "idempotency_key": self.summary.idempotency_key,
            "request_id": self.summary.request_id,
            "attempt": self.attempt,
            "outcome": self.outcome,
            "duration_ms": duration_ms,
        }


# The last delivery this thread concluded: Celery logs its line right after the task returns or raises, in
# the same thread (pool process, or green thread with eventlet or gevent).
_concluded = threading.local()


def concluded(task_id: str) -> Concluded | None:
    """How this thread's task concluded the delivery ``task_id``, if it was the last one it concluded."""
    last: Concluded | None = getattr(_concluded, "last", None)
    return last if last is not None and last.task_id == task_id else None


def is_operation(name: Any) -> bool:
    return name in _operations


def conclude(task: Task, outcome: Outcome) -> dict[str, Any]:
    """``outcome`` in Celery's terms: the result, a retry with its reason, or ``OperationFailed``; noted
    for Celery's log line about it (``concluded``)."""
    request = task.request
    provider, operation = _operations[task.name]
    summary = Summary.of(provider, operation, request.kwargs, request.retries)

    def note(kind: str, shown: str, attempt: int | None = None) -> None:
        _concluded.last = Concluded(str(request.id), summary, kind, shown, attempt)

    if isinstance(outcome, Done):
        status, attempts = outcome.result.get("status"), outcome.result.get("attempts")
        note(str(status), summary.text(outcome=status, attempts=attempts), attempts)
        return outcome.result
    if isinstance(outcome, Retry | Defer):
        if isinstance(outcome, Defer):
            reason: Exception = Deferred(outcome.reason.value)
            note(outcome.reason.value, exception_text(reason))
        else:
            reason = AttemptFailed(outcome.error.type.value)
            note("retry", exception_text(reason))
        # The message sent back is shown by its summary too (its headers, its task-sent event).
        again = Summary.of(provider, operation, request.kwargs, (request.retries or 0) + 1)
        try:
            raise task.retry(
                countdown=outcome.delay,
                max_retries=None,
                exc=reason,
                argsrepr=_args_text(request.args),
                kwargsrepr=again.text(),
            )
        except Reject as exc:
            # Celery rejects without requeue when the retry cannot be published, which would drop the
            # message for good; put it back instead (the ledger says when its next attempt is due).
            note("requeued", f"Reject: not sent back ({type(exc.reason).__name__}); requeued")
            raise Reject(exc.reason, requeue=True) from exc
    error = OperationFailed(outcome.message)
    note(outcome.status.value, exception_text(error))
    raise error


# task name -> (provider, operation): one task function serves every operation task.
_operations: dict[str, tuple[str, str]] = {}


def run_operation(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    provider, operation = _operations[self.name]
    delivery = Delivery(
        operation=operation,
        kwargs=kwargs,
        args=args,
        message_id=self.request.id,
        redeliveries=self.request.retries or 0,
    )
    return conclude(self, runtime().runner(provider).run(delivery))


def register_operation(app: Celery, provider: str, operation: str, name: str, lease: float) -> None:
    _operations[name] = (provider, operation)
    # The attempt's own deadline (integrations.guard.deadline, 3 x timeout) cuts a call that drags on, and
    # covers the call only: a soft time limit would also interrupt storing the result, and report a
    # succeeded operation as failed when Redis is slow to answer. The hard limit, below the lease so that
    # no attempt outlives it, kills a process that hangs even so; the message comes back (OperationRequest).
    app.task(name=name, bind=True, base=OperationTask, time_limit=lease - 1)(run_operation)
