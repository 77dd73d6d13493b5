"""Maintenance tasks, scheduled by Celery beat: the sweeper, and pruning the ledger past its retention."""

from __future__ import annotations

import logging

from celery import Celery

from integrations.sweeper import Sweeper
from tasks.enqueue import resend
from tasks.operations import runtime

log = logging.getLogger("integrations.maintenance")

PRUNE_TASK = "integrations.maintenance.prune_ledger"
SWEEP_TASK = "integrations.maintenance.sweep"
MAINTENANCE_QUEUE = "integrations.maintenance"
MAINTENANCE_TASKS = (PRUNE_TASK, SWEEP_TASK)


def prune_ledger() -> int:
    """Delete ended operations past their retention; returns how many went."""
    current = runtime()
    deleted = current.ledger.prune(
        retention=current.retention, dead_letter_retention=current.dead_letter_retention
    )
    log.info("pruned %d ledger records past retention", deleted)
    return deleted


def sweep() -> int:
    """Send again the operations whose message the broker dropped; returns how many went."""
    current = runtime()
    swept = Sweeper(current.ledger, resend, current.providers, current.sweep_grace).sweep()
    return len(swept)


def register_maintenance(app: Celery, *, sweep_every: float) -> None:
    app.task(name=PRUNE_TASK)(prune_ledger)
    app.task(name=SWEEP_TASK)(sweep)
    app.conf.beat_schedule = {
        "prune-ledger": {"task": PRUNE_TASK, "schedule": 3600.0},
        # A sweep that is late (beat down, a busy maintenance worker) is not made up for: the next one
        # finds the same operations.
        "sweep": {"task": SWEEP_TASK, "schedule": sweep_every, "options": {"expires": sweep_every}},
    }
