"""Maintenance tasks, scheduled by Celery beat: pruning the ledger past its retention."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery

from tasks.operations import runtime

log = logging.getLogger("integrations.maintenance")

PRUNE_TASK = "integrations.maintenance.prune_ledger"
MAINTENANCE_QUEUE = "integrations.maintenance"


def register_maintenance(app: Celery, retention: timedelta, dead_letter_retention: timedelta) -> None:
    @app.task(name=PRUNE_TASK)  # type: ignore[untyped-decorator]
    def prune_ledger() -> int:
        deleted = runtime().ledger.prune(retention=retention, dead_letter_retention=dead_letter_retention)
        log.info("pruned %d ledger records past retention", deleted)
        return deleted
