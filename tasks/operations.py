"""One Celery task per (provider, operation): runs a delivery through the core and maps the Outcome.

Done -> the task's return value; Retry and Defer -> ``self.retry(countdown=...)`` (the message goes back
to its queue and the worker slot is free meanwhile); Failed -> ``OperationFailed`` (Celery FAILURE).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from celery.worker.request import Request
from celery.worker.state import task_ready

from integrations.errors import OperationFailed
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


class OperationRequest(Request):  # type: ignore[misc]
    """A delivery as the worker's main process tracks it. An operation task killed by its hard time limit
    (only a process hung beyond the attempt's own deadline meets it, or one still waiting for Redis to store
    its result: ``result_backend_always_retry``) is not recorded as failed: its outcome is the ledger's, and
    its message goes back to the queue, whose next delivery finds the operation in the ledger (ended, or
    with a lease that runs out) and reports that."""

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


def conclude(task: Task, outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, Done):
        return outcome.result
    if isinstance(outcome, Retry | Defer):
        try:
            raise task.retry(countdown=outcome.delay, max_retries=None)
        except Reject as exc:
            # Celery rejects without requeue when the retry cannot be published, which would drop the
            # message for good; put it back instead (the ledger says when its next attempt is due).
            raise Reject(exc.reason, requeue=True) from exc
    raise OperationFailed(outcome.message)


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
