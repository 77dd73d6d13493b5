"""What the ledger says of each provider as a whole: dead letters, the most overdue operation, and the last
minutes' outcomes. Read by the metrics exporter's fleet gauges and by ``integrations status``; never on a
worker's hot path."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select

from integrations.ledger.models import DEAD_LETTERS, Operation, OperationStatus
from integrations.ledger.records import OperationRecord
from integrations.ledger.rows import record_of
from integrations.ledger.store import Ledger

table = Operation.__table__

# ``recent`` reads at most this many ended operations per call: enough for a p95 of the window.
RECENT_LIMIT = 20_000


@dataclass
class Recent:
    """A provider's operations that ended in a window: counts by status, and how long their last attempt
    took (from its claim to its end)."""

    counts: dict[str, int] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)

    def count(self, status: OperationStatus) -> int:
        return self.counts.get(status.value, 0)

    @property
    def ended(self) -> int:
        return sum(self.counts.values())

    @property
    def success_rate(self) -> float | None:
        """Succeeded among those that ended (a partial batch counts as not succeeded); ``None`` if none."""
        return self.count(OperationStatus.SUCCEEDED) / self.ended if self.ended else None

    @property
    def p95_seconds(self) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def dead_letters(ledger: Ledger) -> dict[str, int]:
    """Dead letters (failed, dead, partial operations, not discarded) in the ledger now, by provider."""
    query = (
        select(table.c.provider, func.count())
        .where(DEAD_LETTERS)  # dlq list's rows
        .group_by(table.c.provider)
    )
    with ledger._begin() as connection:  # LedgerUnavailable when out of reach
        return {str(provider): int(count) for provider, count in connection.execute(query).all()}


def overdue_seconds(ledger: Ledger, now: datetime) -> dict[str, float]:
    """By provider, how long past its due time the most overdue operation is: a queued one whose next
    attempt (or first, if it has had none) was due, or a running one whose lease has run out. Providers
    with none overdue are absent."""
    queued = (
        select(table.c.provider, func.min(func.coalesce(table.c.next_attempt_at, table.c.created_at)))
        .where(table.c.status == OperationStatus.QUEUED.value)
        .group_by(table.c.provider)
    )
    running = (
        select(table.c.provider, func.min(table.c.lease_expires_at))
        .where(table.c.status == OperationStatus.RUNNING.value)
        .group_by(table.c.provider)
    )
    due: dict[str, datetime] = {}
    with ledger._begin() as connection:  # LedgerUnavailable when out of reach
        for query in (queued, running):
            for provider, moment in connection.execute(query).all():
                if moment is None:
                    continue
                moment = _aware(moment)
                due[provider] = min(due.get(provider, moment), moment)
    return {provider: (now - moment).total_seconds() for provider, moment in due.items() if moment < now}


def recent(ledger: Ledger, since: datetime) -> dict[str, Recent]:
    """By provider, the operations that ended since ``since``."""
    terminal = [status.value for status in OperationStatus if status.terminal]
    query = (
        select(table.c.provider, table.c.status, table.c.started_at, table.c.finished_at)
        .where(table.c.status.in_(terminal), table.c.finished_at >= since)
        .order_by(table.c.finished_at.desc())
        .limit(RECENT_LIMIT)
    )
    found: dict[str, Recent] = defaultdict(Recent)
    with ledger._begin() as connection:  # LedgerUnavailable when out of reach
        for provider, status, started, finished in connection.execute(query).all():
            window = found[provider]
            window.counts[status] = window.counts.get(status, 0) + 1
            if started is not None and finished is not None:
                window.seconds.append(max(0.0, (_aware(finished) - _aware(started)).total_seconds()))
    return dict(found)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def ended_since(ledger: Ledger, since: datetime, limit: int = RECENT_LIMIT) -> list[OperationRecord]:
    """Operations with a task id that ended since ``since``, newest first: those whose result a caller's
    ``AsyncResult`` may be waiting for."""
    terminal = [status.value for status in OperationStatus if status.terminal]
    query = (
        select(table)
        .where(table.c.status.in_(terminal), table.c.finished_at >= since, table.c.task_id.is_not(None))
        .order_by(table.c.finished_at.desc())
        .limit(limit)
    )
    with ledger._begin() as connection:  # LedgerUnavailable when out of reach
        return [record_of(row) for row in connection.execute(query).mappings()]
