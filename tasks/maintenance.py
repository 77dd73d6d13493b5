"""Maintenance tasks, scheduled by Celery beat: the sweeper (operations and webhook events), and pruning
the ledger past its retentions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task, states

from integrations.errors import ErrorInfo, OperationFailed
from integrations.ledger import stats
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import OperationRecord
from integrations.resilience.retry import RetryPolicy
from integrations.strategies import result
from integrations.sweeper import Sweeper
from integrations.webhooks.handling import sweep_events
from tasks.enqueue import publish_event, resend
from tasks.events import event_store
from tasks.operations import runtime

log = logging.getLogger("integrations.maintenance")

PRUNE_TASK = "integrations.maintenance.prune_ledger"
SWEEP_TASK = "integrations.maintenance.sweep"
MAINTENANCE_QUEUE = "integrations.maintenance"
MAINTENANCE_TASKS = (PRUNE_TASK, SWEEP_TASK)
# Results read from the result backend in one round trip.
RESULTS_CHUNK = 500


def prune_ledger() -> int:
    """Delete ended operations and webhook events past their retention; returns how many went."""
    current = runtime()
    deleted = current.ledger.prune(
        retention=current.retention, dead_letter_retention=current.dead_letter_retention
    )
    log.info("pruned %d ledger records past retention", deleted)
    events = event_store(current).prune(current.webhook_retention)
    log.info("pruned %d webhook events past retention", events)
    return deleted + events


def sweep(task: Task) -> int:
    """Send again the operations and the webhook events whose message the broker dropped (or the receiver
    could not publish), and store the results the operations' callers miss; returns how many operations
    and events were sent again."""
    current = runtime()
    swept = Sweeper(current.ledger, resend, current.providers, current.sweep_grace).sweep()
    since = current.ledger.clock() - 2 * current.sweep_grace
    store_missing_results(task.app.backend, stats.ended_since(current.ledger, since))
    policies = {
        name: RetryPolicy.of(provider.retry)
        for name, provider in current.providers.items()
        if provider.webhooks is not None
    }
    events = (
        sweep_events(event_store(current), publish_event, policies, current.sweep_grace) if policies else []
    )
    return len(swept) + len(events)


def store_missing_results(backend: Any, records: Sequence[OperationRecord]) -> int:
    """Store the ledger's outcome as the result of each ended operation whose result backend has none, or
    has a state from before its end (RETRY, STARTED): a worker whose pool process was stopped between the
    ledger's write and the result's (a broker connection lost), or a Redis that restarted empty. Returns
    how many it stored."""
    stored = 0
    for start in range(0, len(records), RESULTS_CHUNK):
        chunk = records[start : start + RESULTS_CHUNK]
        for record, state in zip(chunk, _result_states(backend, chunk), strict=True):
            if state in states.READY_STATES:
                continue
            assert record.task_id is not None
            if record.status is OperationStatus.SUCCEEDED or record.items is not None:
                backend.store_result(record.task_id, result(record, replayed=False), states.SUCCESS)
            else:
                error = ErrorInfo.model_validate(record.error)
                failed = OperationFailed(f"{error.type.value}: {error.message}")
                backend.store_result(record.task_id, failed, states.FAILURE)
            stored += 1
            log.warning(
                "result of %s key=%s (task %s) was %s in the result backend; stored the ledger's %s",
                record.where,
                record.idempotency_key,
                record.task_id,
                state,
                record.status.value,
            )
    return stored


def _result_states(backend: Any, records: Sequence[OperationRecord]) -> list[str]:
    """The result backend's state of each record's task, in one round trip on a key-value backend."""
    if hasattr(backend, "mget") and hasattr(backend, "get_key_for_task"):
        raw = backend.mget([backend.get_key_for_task(record.task_id) for record in records])
        return [backend.decode_result(value)["status"] if value else states.PENDING for value in raw]
    return [backend.get_task_meta(record.task_id)["status"] for record in records]


def register_maintenance(app: Celery, *, sweep_every: float) -> None:
    app.task(name=PRUNE_TASK)(prune_ledger)
    app.task(name=SWEEP_TASK, bind=True)(sweep)
    app.conf.beat_schedule = {
        "prune-ledger": {"task": PRUNE_TASK, "schedule": 3600.0},
        # A sweep that is late (beat down, a busy maintenance worker) is not made up for: the next one
        # finds the same operations.
        "sweep": {"task": SWEEP_TASK, "schedule": sweep_every, "options": {"expires": sweep_every}},
    }
