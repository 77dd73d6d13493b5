"""Sending an operation's message from our own side: ``integrations dlq replay`` and the sweeper."""

from __future__ import annotations

from integrations.ledger.records import OperationRecord
from integrations.providers import queue_name, task_name


def enqueue(record: OperationRecord, task_id: str | None = None) -> str:
    """Send ``record``'s operation again, with its key, payload and request id, as a new task (or as
    ``task_id``); returns the task id."""
    from config.celery_app import app  # the app loads the providers file: only when a message is sent

    kwargs = {
        "payload": record.payload,
        "idempotency_key": record.idempotency_key,
        "request_id": record.request_id,
    }
    result = app.send_task(
        task_name(record.provider, record.operation),
        kwargs=kwargs,
        queue=queue_name(record.provider),
        task_id=task_id,
    )
    return str(result.id)


def resend(record: OperationRecord) -> str:
    """Send ``record``'s message again under the task id it first came with, so that its caller's
    ``AsyncResult`` gets the outcome (a new one if the row has none)."""
    return enqueue(record, record.task_id)
