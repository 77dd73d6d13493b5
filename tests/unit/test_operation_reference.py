"""An operation's ``reference`` (the provider's id of what it made) in the ledger, on SQLite and
PostgreSQL: written by the statement that records the success, found again by provider and reference,
and the migration that adds the column, down and up again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from alembic import command
from sqlalchemy import Engine, event, inspect
from sqlalchemy.engine import Connection

from integrations.errors import ErrorInfo, ErrorType
from integrations.ledger import schema
from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import NewOperation, OperationRecord
from integrations.ledger.store import Ledger
from integrations.resilience.idempotency import fingerprint
from tests.clock import Clock

LEASE = timedelta(seconds=35)
PAYLOAD = {"amount": 2000, "currency": "usd"}
INTENT = {"id": "pi_3MtwBwLkdIwHu7ix28a3tqPa", "object": "payment_intent", "status": "succeeded"}


def start(ledger: Ledger, key: str, *, provider: str = "stripe") -> OperationRecord:
    new = NewOperation(
        provider,
        "create_payment_intent",
        key,
        fingerprint("create_payment_intent", PAYLOAD),
        PAYLOAD,
        "req-1",
    )
    record = ledger.start(new, lease=LEASE)
    assert record is not None
    return record


def test_the_success_and_its_reference_are_one_statement(ledger: Ledger) -> None:
    record = start(ledger, "order-1")
    updates: list[str] = []

    def count(_conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            updates.append(statement)

    event.listen(Engine, "before_cursor_execute", count)  # every engine: the ledger has two
    try:
        finished = ledger.finish(record, OperationStatus.SUCCEEDED, response=INTENT, reference=INTENT["id"])
    finally:
        event.remove(Engine, "before_cursor_execute", count)

    assert len(updates) == 1 and "reference" in updates[0]
    assert finished is not None and finished.reference == INTENT["id"]
    stored = ledger.get(record.id)
    assert stored is not None
    assert (stored.status, stored.reference) == (OperationStatus.SUCCEEDED, INTENT["id"])
    assert stored.to_json()["reference"] == INTENT["id"]


def test_find_by_reference_is_per_provider(ledger: Ledger) -> None:
    made = ledger.finish(
        start(ledger, "order-1"), OperationStatus.SUCCEEDED, response=INTENT, reference=INTENT["id"]
    )
    other = ledger.finish(
        start(ledger, "order-1", provider="stripe-eu"),
        OperationStatus.SUCCEEDED,
        response=INTENT,
        reference=INTENT["id"],
    )
    assert made is not None and other is not None

    assert ledger.find_by_reference("stripe", INTENT["id"]) == ledger.get(made.id)
    assert ledger.find_by_reference("stripe-eu", INTENT["id"]) == ledger.get(other.id)
    assert ledger.find_by_reference("stripe", "pi_unknown") is None
    assert ledger.find_by_reference("acme", INTENT["id"]) is None


def test_two_operations_given_the_same_object_find_the_first(ledger_url: str) -> None:
    clock = Clock()
    ledger = Ledger(create_ledger_engine(ledger_url), clock=clock)
    try:
        first = start(ledger, "contact-1", provider="hubspot")
        clock.advance(1)
        second = start(ledger, "contact-1-again", provider="hubspot")
        for record in (second, first):
            ledger.finish(record, OperationStatus.SUCCEEDED, response={"id": "1001"}, reference="1001")

        found = ledger.find_by_reference("hubspot", "1001")

        assert found is not None and found.id == first.id
    finally:
        ledger.dispose()


def test_a_failure_or_a_retry_leaves_no_reference_and_finishing_without_one_keeps_it(ledger: Ledger) -> None:
    record = start(ledger, "order-1")
    error = ErrorInfo(type=ErrorType.PROVIDER_UNAVAILABLE, message="stripe.create_payment_intent: HTTP 503")
    queued = ledger.finish(record, OperationStatus.QUEUED, error=error)
    assert queued is not None and queued.reference is None

    claimed = ledger.claim(queued, lease=LEASE, request_id="req-1")
    assert claimed is not None
    done = ledger.finish(claimed, OperationStatus.SUCCEEDED, response=INTENT, reference=INTENT["id"])
    assert done is not None

    # A finish that names no reference (a queued row ended by the sweeper, say) leaves the column alone.
    again = ledger.finish(done, OperationStatus.SUCCEEDED, response=INTENT)
    assert again is not None
    stored = ledger.get(record.id)
    assert stored is not None and stored.reference == INTENT["id"]


# -- the migration --------------------------------------------------------------------------------


def test_the_migration_adds_the_column_and_its_index_and_its_downgrade_removes_them(
    ledger_url: str,
) -> None:
    config = schema.alembic_config(ledger_url)
    engine = create_ledger_engine(ledger_url)

    def column_and_index() -> tuple[bool, bool]:
        inspector = inspect(engine)
        columns = {column["name"] for column in inspector.get_columns("operations")}
        indexes = {str(index["name"]) for index in inspector.get_indexes("operations")}
        return "reference" in columns, "ix_operations_provider_reference" in indexes

    try:
        ledger = Ledger(engine)
        kept = start(ledger, "before-downgrade")
        command.downgrade(config, "0006")
        assert schema.current_revision(engine) == "0006"
        assert column_and_index() == (False, False)
    finally:
        schema.upgrade(ledger_url)
    try:
        assert schema.current_revision(engine) == schema.head_revision() == "0009"
        assert column_and_index() == (True, True)
        # The rows of before the upgrade are kept, without a reference.
        stored = ledger.get(kept.id)
        assert stored is not None and stored.reference is None
        finished = ledger.finish(stored, OperationStatus.SUCCEEDED, response=INTENT, reference="pi_after")
        assert finished is not None
        assert ledger.find_by_reference("stripe", "pi_after") == ledger.get(kept.id)
    finally:
        engine.dispose()
