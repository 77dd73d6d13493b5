"""Pruning the ledger in batches, on both backends: what is past its retention goes, the rest stays, no
statement deletes more than a batch, and each batch is committed when its statement ends, so a writer
waits for one batch at most."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from integrations.errors import ErrorInfo, ErrorType
from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import NewOperation, OperationRecord
from integrations.ledger.rows import table
from integrations.ledger.store import Ledger
from tests.clock import Clock

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=7)
DEAD_LETTER_RETENTION = timedelta(days=30)
LEASE = timedelta(seconds=30)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def timed(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger(create_ledger_engine(ledger_url), clock=clock)
    yield ledger
    ledger.dispose()


def operation(ledger: Ledger, key: str, status: OperationStatus, days_ago: float) -> OperationRecord:
    """An operation that started and ended ``days_ago`` with ``status`` (or is still at it)."""
    clock = ledger.clock
    assert isinstance(clock, Clock)
    clock.set(NOW - timedelta(days=days_ago))
    try:
        new = NewOperation("acme", "request", key, f"fp-{key}", {"method": "POST", "path": "/v1/x"}, key)
        record = ledger.start(new, lease=LEASE)
        assert record is not None
        if status is OperationStatus.RUNNING:
            return record
        error = None
        if status.ended_badly:
            error = ErrorInfo(type=ErrorType.PROVIDER_REJECTED, message="HTTP 422", status_code=422)
        response = {"status_code": 200} if status is OperationStatus.SUCCEEDED else None
        if status is OperationStatus.QUEUED:
            error = ErrorInfo(type=ErrorType.PROVIDER_UNAVAILABLE, message="HTTP 503", status_code=503)
            finished = ledger.finish(record, status, error=error, next_attempt_at=clock() + LEASE)
        else:
            finished = ledger.finish(record, status, error=error, response=response)
        assert finished is not None
        return finished
    finally:
        clock.set(NOW)


class Deletes:
    """The DELETE statements run on an engine: how many rows each removed, and how many rows of the
    table another connection counted right after the first of them returned."""

    def __init__(self, ledger: Ledger, observer: Ledger) -> None:
        self.rowcounts: list[int] = []
        self.seen_after_first: int | None = None
        self._observer = observer
        event.listen(ledger.engine, "after_cursor_execute", self._after)

    def _after(self, _conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if "DELETE FROM operations" not in statement:  # on PostgreSQL, after the WITH of its batch
            return
        self.rowcounts.append(cursor.rowcount)
        if self.seen_after_first is None:
            self.seen_after_first = count_rows(self._observer)


def count_rows(ledger: Ledger) -> int:
    with ledger.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def test_prune_deletes_what_is_past_retention_a_batch_per_statement(timed: Ledger, ledger_url: str) -> None:
    gone: dict[str, OperationRecord] = {}
    for number in range(7):
        gone[f"ok-{number}"] = operation(timed, f"ok-{number}", OperationStatus.SUCCEEDED, 8 + number)
    for number in range(5):
        gone[f"dead-{number}"] = operation(timed, f"dead-{number}", OperationStatus.DEAD, 31 + number)
    for number in range(2):
        gone[f"failed-{number}"] = operation(timed, f"failed-{number}", OperationStatus.FAILED, 40)
    kept = {
        "ok-recent": operation(timed, "ok-recent", OperationStatus.SUCCEEDED, 6),
        # Past the retention of successes, inside that of dead letters.
        "dead-recent": operation(timed, "dead-recent", OperationStatus.DEAD, 8),
        "failed-recent": operation(timed, "failed-recent", OperationStatus.FAILED, 29),
        # Not ended, however old: never pruned.
        "queued-ancient": operation(timed, "queued-ancient", OperationStatus.QUEUED, 90),
        "running-ancient": operation(timed, "running-ancient", OperationStatus.RUNNING, 90),
    }
    observer = Ledger.connect(ledger_url)
    deletes = Deletes(timed, observer)
    try:
        deleted = timed.prune(retention=RETENTION, dead_letter_retention=DEAD_LETTER_RETENTION, batch=3)
        remaining = {record.idempotency_key for record in timed.operations(limit=100)}
    finally:
        observer.dispose()

    assert deleted == len(gone) == 14
    assert remaining == set(kept)
    assert all(timed.get(record.id) == record for record in kept.values())
    # No statement deleted more than a batch: successes 3 + 3 + 1, dead letters 3 + 2, failed 2.
    assert max(deletes.rowcounts) == 3
    assert sorted(count for count in deletes.rowcounts if count) == [1, 2, 2, 3, 3, 3]
    assert sum(deletes.rowcounts) == 14
    # The first batch was committed before the second began: another connection no longer saw it.
    assert deletes.seen_after_first == len(gone) + len(kept) - 3
    assert timed.prune(retention=RETENTION, dead_letter_retention=DEAD_LETTER_RETENTION, batch=3) == 0


def test_prune_with_the_default_batch_keeps_the_same_rows(timed: Ledger) -> None:
    for number in range(3):
        operation(timed, f"old-{number}", OperationStatus.SUCCEEDED, 10)
    operation(timed, "partial-old", OperationStatus.PARTIAL, 31)
    kept = operation(timed, "partial-recent", OperationStatus.PARTIAL, 20)

    deleted = timed.prune(retention=RETENTION, dead_letter_retention=DEAD_LETTER_RETENTION)

    assert deleted == 4
    assert [record.id for record in timed.operations()] == [kept.id]


def test_a_batch_of_less_than_one_row_is_refused(timed: Ledger) -> None:
    operation(timed, "old", OperationStatus.SUCCEEDED, 10)

    with pytest.raises(ValueError, match="batch size must be at least 1, got 0"):
        timed.prune(retention=RETENTION, dead_letter_retention=DEAD_LETTER_RETENTION, batch=0)

    assert count_rows(timed) == 1


def test_prune_passes_over_a_row_a_writer_holds_on_postgresql(timed: Ledger, ledger_url: str) -> None:
    if timed.engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL only (SQLite locks the whole database for a write)")
    held = operation(timed, "held", OperationStatus.DEAD, 40)
    others = [operation(timed, f"other-{number}", OperationStatus.DEAD, 40) for number in range(3)]
    writer = create_ledger_engine(ledger_url)
    try:
        with writer.begin() as transaction:
            # A replay under way: its row is locked until it commits.
            transaction.execute(select(table.c.id).where(table.c.id == held.id).with_for_update())

            deleted = timed.prune(retention=RETENTION, dead_letter_retention=DEAD_LETTER_RETENTION, batch=2)

        assert deleted == len(others)
        assert timed.get(held.id) == held
        assert all(timed.get(record.id) is None for record in others)
    finally:
        writer.dispose()
