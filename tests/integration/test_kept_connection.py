"""The main thread keeps its ledger connection from one statement to the next (a worker's pool process runs
its tasks there); other threads take one from the pool per statement; an error or a long idle gives the
kept one back. Counted through the pool's checkout events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import event

from integrations.errors import LedgerUnavailable
from integrations.ledger import engine as ledger_engine
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import NewOperation
from integrations.ledger.store import Ledger
from integrations.resilience.idempotency import fingerprint

PAYLOAD = {"method": "POST", "path": "/v1/charges"}


@pytest.fixture
def checkouts(ledger: Ledger) -> Iterator[list[int]]:
    """How many connections the ledger's statements took from the pool, by thread id."""
    taken: list[int] = []

    def count(*_args: object) -> None:
        taken.append(threading.get_ident())

    pool = ledger._autocommit.pool
    event.listen(pool, "checkout", count)
    yield taken
    event.remove(pool, "checkout", count)


def attempt(ledger: Ledger, key: str) -> None:
    """An attempt's two statements: claimed, then finished."""
    new = NewOperation("acme", "request", key, fingerprint("request", PAYLOAD), PAYLOAD, None)
    claimed = ledger.take(new, lease=timedelta(seconds=35), request_id=None, tolerance=timedelta(seconds=1))
    assert claimed is not None
    assert ledger.finish(claimed, OperationStatus.SUCCEEDED, response={"status_code": 200}) is not None


def test_the_main_thread_takes_one_connection_for_many_statements(
    ledger: Ledger, checkouts: list[int]
) -> None:
    for number in range(5):
        attempt(ledger, f"main-{number}")
    assert len(checkouts) == 1


def test_another_thread_takes_one_per_statement(ledger: Ledger, checkouts: list[int]) -> None:
    thread = threading.Thread(target=lambda: [attempt(ledger, f"thread-{n}") for n in range(3)])
    thread.start()
    thread.join()
    assert len(checkouts) == 6 and set(checkouts) == {thread.ident}


def test_an_error_gives_the_connection_back_and_the_next_statement_takes_another(
    ledger: Ledger, checkouts: list[int]
) -> None:
    attempt(ledger, "before")
    with pytest.raises(LedgerUnavailable), ledger._begin() as connection:
        connection.exec_driver_sql("SELECT * FROM no_such_table")
    attempt(ledger, "after")
    assert len(checkouts) == 2


def test_an_idle_connection_is_given_back(
    ledger: Ledger, checkouts: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    attempt(ledger, "first")
    monkeypatch.setattr(ledger_engine, "KEEP_IDLE", -1.0)  # idle for longer than allowed, at once
    attempt(ledger, "second")
    assert len(checkouts) == 3  # each of the second attempt's statements found the kept one too idle


def test_the_kept_connection_reads_what_others_wrote_since(ledger: Ledger, ledger_url: str) -> None:
    """No read is left open on it: each statement sees the rows as they are now, not as they were when the
    connection was first used."""
    attempt(ledger, "written-elsewhere-0")
    other = Ledger.connect(ledger_url)
    try:
        new = NewOperation(
            "acme", "request", "written-elsewhere", fingerprint("request", PAYLOAD), PAYLOAD, None
        )
        started = other.start(new, lease=timedelta(seconds=35))
        assert started is not None
        record = ledger.find("acme", "written-elsewhere")
        assert record is not None and record.status is OperationStatus.RUNNING
        assert other.finish(started, OperationStatus.SUCCEEDED, response={"status_code": 200}) is not None
        record = ledger.find("acme", "written-elsewhere")
        assert record is not None and record.status is OperationStatus.SUCCEEDED
        assert {letter.idempotency_key for letter in ledger.operations(limit=10)} >= {"written-elsewhere"}
    finally:
        other.dispose()
