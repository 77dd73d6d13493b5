"""Maintenance tasks, scheduled by Celery beat: pruning the ledger past its retention."""

from __future__ import annotations

import logging

from celery import Celery

from tasks.operations import runtime

log = logging.getLogger("integrations.maintenance")

PRUNE_TASK = "integrations.maintenance.prune_ledger"
MAINTENANCE_QUEUE = "integrations.maintenance"


def prune_ledger() -> int:
    """Delete ended operations past their retention; returns how many went."""
    current = runtime()
    deleted = current.ledger.prune(
        retention=current.retention, dead_letter_retention=current.dead_letter_retention
    )
    log.info("pruned %d ledger records past retention", deleted)
    return deleted


def register_maintenance(app: Celery) -> None:
    app.task(name=PRUNE_TASK)(prune_ledger)
    app.conf.beat_schedule = {"prune-ledger": {"task": PRUNE_TASK, "schedule": 3600.0}}
