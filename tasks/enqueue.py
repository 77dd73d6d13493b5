"""Sending an operation's message from our own side: ``integrations dlq replay``, the sweeper and
``integrations.client.enqueue``; and a webhook event's: the receiver, the sweeper and ``events replay``."""

from __future__ import annotations

from celery import Celery

from integrations.ledger.records import OperationRecord
from integrations.providers import queue_name, task_name
from tasks.events import event_task_name
from tasks.operations import Summary


def send(app: Celery, record: OperationRecord, task_id: str | None = None) -> str:
    """Send ``record``'s operation through ``app`` with its key, payload and request id, as a new task (or
    as ``task_id``); returns the task id."""
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
        # What the "task-sent" event and Flower show of the message: never its payload.
        argsrepr="()",
        kwargsrepr=Summary.of(record.provider, record.operation, kwargs).text(),
    )
    return str(result.id)


def enqueue(record: OperationRecord) -> str:
    """Send ``record``'s operation again as a new task, through this deployment's app."""
    from config.celery_app import app  # the app loads the providers file: only when a message is sent

    return send(app, record)


def resend(record: OperationRecord) -> str:
    """Send ``record``'s message again under the task id it first came with, so that its caller's
    ``AsyncResult`` gets the outcome (a new one if the row has none)."""
    from config.celery_app import app

    return send(app, record, record.task_id)


def send_event(app: Celery, provider: str, event: str) -> str:
    """Send the handling of ``provider``'s stored event ``event`` (the ledger's id) through ``app``;
    returns the task id. The message names the event only: the task reads it from the ledger."""
    kwargs = {"event": event}
    result = app.send_task(
        event_task_name(provider),
        kwargs=kwargs,
        queue=queue_name(provider),
        argsrepr="()",
        kwargsrepr=repr(kwargs),
    )
    return str(result.id)


def publish_event(provider: str, event: str) -> str:
    """Send the handling of a stored event through this deployment's app."""
    from config.celery_app import app

    return send_event(app, provider, event)
