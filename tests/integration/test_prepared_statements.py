"""An attempt's two statements run on the driver's cursor (``integrations.ledger.prepared``): they store and
give back what SQLAlchemy's way does, their errors reach callers as every other statement's do, and a
connection the server dropped is replaced, on both ledgers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import UpdateBase

from integrations.errors import ErrorInfo, ErrorType, LedgerUnavailable
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import NewOperation, OperationRecord
from integrations.ledger.store import Ledger
from integrations.resilience.idempotency import fingerprint
from tests.clock import Clock

PAYLOAD = {
    "method": "POST",
    "path": "/v1/charges",
    "json": {"amount": 1200, "note": "café ☕", "tags": [1, None]},
}
LEASE = timedelta(seconds=35)


@contextmanager
def through_sqlalchemy() -> Iterator[None]:
    """Statements as SQLAlchemy runs them: a listener of its statement events makes the ledger use them."""

    def listen(*_args: Any) -> None:
        pass

    event.listen(Engine, "before_cursor_execute", listen)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", listen)


def attempts(ledger: Ledger, clock: Clock, key: str) -> list[OperationRecord]:
    """A first attempt that fails and is retried, then a second that succeeds: the row after each step."""
    new = NewOperation("acme", "request", key, fingerprint("request", PAYLOAD), PAYLOAD, "req-1")
    rows: list[OperationRecord | None] = []
    first = ledger.take(new, lease=LEASE, request_id="req-1", tolerance=timedelta(seconds=1))
    rows.append(first)
    assert first is not None
    error = ErrorInfo(type=ErrorType.PROVIDER_UNAVAILABLE, message="acme.request: 503", status_code=503)
    clock.advance(0.25)
    rows.append(
        ledger.finish(
            first, OperationStatus.QUEUED, error=error, next_attempt_at=clock() + timedelta(seconds=2)
        )
    )
    clock.advance(2)
    second = ledger.take(new, lease=LEASE, request_id=None, tolerance=timedelta(seconds=1))
    rows.append(second)
    assert second is not None
    clock.advance(0.5)
    answer = {"status_code": 200, "body": {"id": "ch_1", "amount": 1200, "note": "café ☕"}}
    rows.append(ledger.finish(second, OperationStatus.SUCCEEDED, response=answer, reference="ch_1"))
    rows.append(ledger.find("acme", key))
    assert all(row is not None for row in rows)
    return [row for row in rows if row is not None]


def test_the_driver_stores_and_gives_back_what_sqlalchemy_does(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    executed: list[Any] = []  # what went through SQLAlchemy's Connection
    execute = Connection.execute

    def noted(connection: Connection, statement: Any, *args: Any, **kwargs: Any) -> Any:
        executed.append(statement)
        return execute(connection, statement, *args, **kwargs)

    def writes() -> int:
        return sum(isinstance(statement, UpdateBase) for statement in executed)

    monkeypatch.setattr(Connection, "execute", noted)
    clock = Clock()
    ledger = Ledger.connect(ledger_url, clock=clock)
    try:
        on_the_driver = attempts(ledger, clock, "on-the-driver")
        assert writes() == 0  # the two takes and the two finishes ran on the driver
        with through_sqlalchemy():
            clock.now = on_the_driver[0].created_at  # the same times, so that the rows can be compared
            usual = attempts(ledger, clock, "usual")
        assert writes() == 4
    finally:
        ledger.dispose()

    def comparable(record: OperationRecord) -> dict[str, Any]:
        return {name: value for name, value in vars(record).items() if name not in ("id", "idempotency_key")}

    assert [comparable(row) for row in on_the_driver] == [comparable(row) for row in usual]
    ended = on_the_driver[-1]
    assert (ended.status, ended.attempts, ended.reference) == (OperationStatus.SUCCEEDED, 2, "ch_1")
    assert ended.payload == PAYLOAD and ended.response["body"]["note"] == "café ☕"
    assert ended.created_at.tzinfo is not None and [entry["outcome"] for entry in ended.history] == [
        "retry",
        "succeeded",
    ]


def test_a_ledger_without_its_table_is_unavailable_by_name(ledger: Ledger) -> None:
    with ledger._begin() as connection:
        connection.exec_driver_sql("ALTER TABLE operations RENAME TO operations_away")
    new = NewOperation("acme", "request", "k-1", fingerprint("request", PAYLOAD), PAYLOAD, None)
    try:
        with pytest.raises(LedgerUnavailable, match="operations") as raised:
            ledger.take(new, lease=LEASE, request_id=None, tolerance=timedelta(seconds=1))
        assert "integrations db upgrade" in str(raised.value)
    finally:
        with ledger._begin() as connection:
            connection.exec_driver_sql("ALTER TABLE operations_away RENAME TO operations")
    assert ledger.take(new, lease=LEASE, request_id=None, tolerance=timedelta(seconds=1)) is not None


def backend_pid(connection: Connection) -> int:
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver.info.backend_pid


def test_a_connection_the_server_dropped_fails_one_statement_and_is_replaced(ledger_url: str) -> None:
    if ledger_url.startswith("sqlite"):
        pytest.skip("a SQLite ledger has no server to drop its connections")
    ledger = Ledger.connect(ledger_url)
    try:
        new = NewOperation("acme", "request", "dropped-1", fingerprint("request", PAYLOAD), PAYLOAD, None)
        claimed = ledger.take(new, lease=LEASE, request_id=None, tolerance=timedelta(seconds=1))
        assert claimed is not None
        # Read from the driver, not by a statement: the connection's only statement stays the driver's own.
        with ledger._begin() as connection:
            backend = backend_pid(connection)
        other = Ledger.connect(ledger_url)
        with other._begin() as connection:
            assert connection.exec_driver_sql(f"SELECT pg_terminate_backend({backend})").scalar_one()
        other.dispose()

        invalidated: list[BaseException | None] = []
        event.listen(ledger._autocommit.pool, "invalidate", lambda _c, _r, exc: invalidated.append(exc))
        with pytest.raises(LedgerUnavailable, match="OperationalError"):
            ledger.finish(claimed, OperationStatus.SUCCEEDED, response={"status_code": 200})
        # The pool knows it lost the connection, as with SQLAlchemy's own statements.
        assert len(invalidated) == 1
        assert ledger.finish(claimed, OperationStatus.SUCCEEDED, response={"status_code": 200}) is not None
        with ledger._begin() as connection:
            assert backend_pid(connection) != backend
        record = ledger.find("acme", "dropped-1")
        assert record is not None and record.status is OperationStatus.SUCCEEDED
    finally:
        ledger.dispose()


def test_a_statements_error_shows_no_value_it_was_given(ledger: Ledger) -> None:
    """Logs show an internal error's exception: a statement's values (payloads, answers) must not be in it."""
    if ledger.engine.dialect.name == "sqlite":
        pytest.skip("SQLite keeps a string of any length: no value makes its statement fail")
    secret = {"card": "4242-secret-marker"}
    new = NewOperation("p" * 65, "request", "k-long", fingerprint("request", secret), secret, None)
    with pytest.raises(DBAPIError) as raised:
        ledger.take(new, lease=LEASE, request_id=None, tolerance=timedelta(seconds=1))
    assert "value too long" in str(raised.value)
    assert "secret-marker" not in str(raised.value)
    with through_sqlalchemy(), pytest.raises(DBAPIError) as raised:
        ledger.take(new, lease=LEASE, request_id=None, tolerance=timedelta(seconds=1))
    assert "secret-marker" not in str(raised.value)
