"""One Celery task per (provider, operation): runs a delivery through the core and maps the Outcome.

Done -> the task's return value; Retry and Defer -> ``self.retry(countdown=...)`` (the message goes back
to its queue and the worker slot is free meanwhile); Failed -> ``OperationFailed`` (Celery FAILURE).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from integrations.errors import OperationFailed
from integrations.pipeline import Defer, Delivery, Done, Outcome, Retry
from integrations.runtime import Runtime

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


class OperationTask(Task):  # type: ignore[misc]
    acks_late = True
    max_retries = None  # attempts are counted in the ledger; a deferral must not use them up
    throws = (OperationFailed,)  # an expected failure: logged in one line, without a traceback
    typing = False  # the core validates kwargs, so a bad message is recorded as invalid_request


def conclude(task: Task, outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, Done):
        return outcome.result
    if isinstance(outcome, Retry | Defer):
        raise task.retry(countdown=outcome.delay, max_retries=None)
    raise OperationFailed(outcome.message)


def register_operation(app: Celery, provider: str, operation: str, name: str) -> None:
    def run(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        delivery = Delivery(
            operation=operation,
            kwargs=kwargs,
            args=args,
            redeliveries=self.request.retries or 0,
        )
        return conclude(self, runtime().runner(provider).run(delivery))

    run.__name__ = run.__qualname__ = f"{provider}_{operation}".replace("-", "_")  # Celery compiles it
    app.task(name=name, bind=True, base=OperationTask)(run)
