"""Sending an operation's message from our own side (``integrations dlq replay``)."""

from __future__ import annotations

from integrations.ledger.records import OperationRecord
from integrations.providers import queue_name, task_name


def enqueue(record: OperationRecord) -> str:
    """Send ``record``'s operation again, with its key, payload and request id; returns the task id."""
    from config.celery_app import app  # the app loads the providers file: only when a message is sent

    kwargs = {
        "payload": record.payload,
        "idempotency_key": record.idempotency_key,
        "request_id": record.request_id,
    }
    result = app.send_task(
        task_name(record.provider, record.operation), kwargs=kwargs, queue=queue_name(record.provider)
    )
    return str(result.id)
