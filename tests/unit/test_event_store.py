"""Inbound webhook events in the ledger, on SQLite and PostgreSQL: stored once however often and however
concurrently they are delivered, their bodies byte for byte, handling outcomes, listings, pruning, and the
migration that adds their table, down and up again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, inspect, select

from integrations.errors import ErrorInfo, ErrorType, LedgerUnavailable
from integrations.ledger import schema
from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.models import WebhookEvent
from integrations.webhooks.store import EventRecord, EventStatus, EventStore, Relation
from tests.clock import Clock

T0 = datetime(2026, 12, 4, 9, 30, 0, 250000, tzinfo=UTC)
# Not sorted, spaced, with a non-ASCII character: what a JSON column would re-encode.
BODY = (
    b'{"type": "payment_intent.succeeded",  "id": "evt_1",\n "data": {"amount": 1200, "name": "Zo\xc3\xab"}}'
)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def store(ledger_url: str, clock: Clock) -> Iterator[EventStore]:
    store = EventStore(create_ledger_engine(ledger_url), clock=clock)
    yield store
    store.dispose()


def rows(store: EventStore) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(WebhookEvent.__table__)).scalar_one())


def stored(
    store: EventStore,
    event_id: str,
    *,
    provider: str = "stripe",
    type: str = "payment_intent.succeeded",
    body: bytes = BODY,
) -> EventRecord:
    record, new = store.store(provider, event_id, type, body)
    assert new
    return record


def with_body(record: EventRecord | None) -> EventRecord:
    """``record`` as ``get`` gives it: with its body."""
    assert record is not None
    return replace(record, body=BODY)


# -- storing -------------------------------------------------------------------------------------


def test_an_event_is_stored_once_with_the_bytes_received(store: EventStore, clock: Clock) -> None:
    record, new = store.store("stripe", "evt_1", "payment_intent.succeeded", BODY)
    clock.advance(60)
    again, new_again = store.store("stripe", "evt_1", "payment_intent.succeeded", b'{"id": "evt_1"}')

    assert (new, new_again) == (True, False)
    assert again == record  # the first delivery's row: its body and time, not the later one's
    assert again.body == BODY
    assert again.received_at == T0
    assert again.status is EventStatus.RECEIVED
    assert (again.attempts, again.error, again.operation_id, again.relation) == (0, None, None, None)
    assert store.get(record.id) == record
    assert store.find("stripe", "evt_1") == record
    assert rows(store) == 1


def test_the_same_event_id_of_another_provider_is_another_event(store: EventStore) -> None:
    first, _ = store.store("stripe", "evt_1", "charge.succeeded", BODY)
    other, new = store.store("acme", "evt_1", "charge.succeeded", BODY)

    assert new
    assert other.id != first.id
    assert rows(store) == 2


def test_a_body_that_is_not_utf8_comes_back_byte_for_byte(store: EventStore) -> None:
    body = '{"name": "Zoë"}'.encode("utf-16") + b"\x00\xff"
    record = stored(store, "evt_2", body=body)

    fetched = store.get(record.id)
    assert fetched is not None and fetched.body == body
    assert "body" not in fetched.to_json(with_body=True)
    assert fetched.to_json(with_body=True)["body_base64"]


def test_a_thousand_concurrent_deliveries_of_one_event_store_one_row(store: EventStore) -> None:
    threads, each = 8, 125
    start = threading.Barrier(threads)
    results: list[tuple[EventRecord, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def deliver() -> None:
        start.wait()
        try:
            for _ in range(each):
                outcome = store.store("stripe", "evt_dup", "invoice.paid", BODY)
                with lock:
                    results.append(outcome)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    workers = [threading.Thread(target=deliver) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    assert len(results) == threads * each
    assert sum(new for _, new in results) == 1
    assert len({record.id for record, _ in results}) == 1
    assert rows(store) == 1


@pytest.mark.parametrize(
    ("event_id", "event_type", "body", "received_at", "says"),
    [
        ("", "invoice.paid", BODY, T0, "event id is missing"),
        (
            "e" * 256,
            "invoice.paid",
            BODY,
            T0,
            "event id is 256 characters long; the ledger keeps at most 255",
        ),
        ("evt\x00", "invoice.paid", BODY, T0, "event id contains a NUL character"),
        ("evt_3", "", BODY, T0, "type (event 'evt_3') is missing"),
        ("evt_3", "invoice.paid", BODY.decode(), T0, "its body must be the bytes received, not str"),
        ("evt_3", "invoice.paid", BODY, T0.replace(tzinfo=None), "received_at must be timezone-aware"),
    ],
)
def test_an_event_the_ledger_cannot_keep_is_refused_naming_what_is_wrong(
    store: EventStore, event_id: str, event_type: str, body: bytes, received_at: datetime, says: str
) -> None:
    with pytest.raises(ValueError, match="provider 'stripe'") as refused:
        store.store("stripe", event_id, event_type, body, received_at)

    assert says in str(refused.value)
    assert rows(store) == 0


def test_a_ledger_without_the_schema_is_unavailable_and_says_to_upgrade(tmp_path: Path) -> None:
    store = EventStore.connect(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    try:
        with pytest.raises(LedgerUnavailable, match="integrations db upgrade"):
            store.store("stripe", "evt_1", "invoice.paid", BODY)
    finally:
        store.dispose()


# -- handling outcomes ------------------------------------------------------------------------------


def test_each_handling_pass_is_counted_and_the_outcome_links_the_operation(
    store: EventStore, clock: Clock
) -> None:
    record = stored(store, "evt_4")
    failure = ErrorInfo(type=ErrorType.PROVIDER_UNAVAILABLE, message="handler: HTTP 503", status_code=503)

    retried = store.mark(record.id, EventStatus.RECEIVED, error=failure)
    clock.advance(5)
    handled = store.mark(record.id, EventStatus.HANDLED, operation_id="op-1", relation=Relation.CONFIRMS)

    assert retried is not None and retried.attempts == 1
    assert retried.error == failure.model_dump(mode="json") and retried.handled_at is None
    assert handled is not None
    assert handled.status is EventStatus.HANDLED
    assert (handled.attempts, handled.error, handled.handled_at) == (2, None, T0 + timedelta(seconds=5))
    assert (handled.operation_id, handled.relation) == ("op-1", Relation.CONFIRMS)
    assert store.get(record.id) == with_body(handled)


def test_an_ended_event_is_not_marked_again(store: EventStore) -> None:
    record = stored(store, "evt_5")
    ended = store.mark(record.id, EventStatus.HANDLED)

    late = store.mark(
        record.id,
        EventStatus.DEAD,
        error=ErrorInfo(type=ErrorType.RETRIES_EXHAUSTED, message="x"),
    )

    assert late is None
    assert store.get(record.id) == with_body(ended)
    assert store.mark("no-such-event", EventStatus.HANDLED) is None


def test_an_operation_is_named_with_how_the_event_stands_to_it(store: EventStore) -> None:
    record = stored(store, "evt_6")

    with pytest.raises(ValueError, match="confirms or contradicts"):
        store.mark(record.id, EventStatus.HANDLED, operation_id="op-1")
    with pytest.raises(ValueError, match="confirms or contradicts"):
        store.mark(record.id, EventStatus.HANDLED, relation=Relation.CONTRADICTS)
    assert store.get(record.id) == record


def test_the_events_of_an_operation_oldest_first(store: EventStore, clock: Clock) -> None:
    succeeded = stored(store, "evt_7", type="payment_intent.succeeded")
    clock.advance(1)
    refunded = stored(store, "evt_8", type="charge.refunded")
    clock.advance(1)
    stored(store, "evt_9")
    store.mark(refunded.id, EventStatus.HANDLED, operation_id="op-2", relation=Relation.CONTRADICTS)
    store.mark(succeeded.id, EventStatus.HANDLED, operation_id="op-2", relation=Relation.CONFIRMS)

    found = store.for_operation("op-2")

    assert [(e.event_id, e.relation) for e in found] == [
        ("evt_7", Relation.CONFIRMS),
        ("evt_8", Relation.CONTRADICTS),
    ]
    assert all(event.body is None for event in found)
    assert store.for_operation("op-none") == []


# -- listing and pruning ------------------------------------------------------------------------------


def test_list_filters_newest_first_without_bodies(store: EventStore, clock: Clock) -> None:
    a = stored(store, "a", provider="stripe", type="invoice.paid")
    clock.advance(60)
    b = stored(store, "b", provider="stripe", type="charge.refunded")
    clock.advance(60)
    c = stored(store, "c", provider="hubspot", type="invoice.paid")
    store.mark(b.id, EventStatus.UNHANDLED)

    def ids(**filters: Any) -> list[str]:
        return [event.event_id for event in store.list(**filters)]

    assert ids() == ["c", "b", "a"]
    assert ids(provider="stripe") == ["b", "a"]
    assert ids(type="invoice.paid") == ["c", "a"]
    assert ids(status=EventStatus.UNHANDLED) == ["b"]
    assert ids(status=EventStatus.RECEIVED, provider="stripe") == ["a"]
    assert ids(since=b.received_at) == ["c", "b"]
    assert ids(limit=1) == ["c"]
    assert all(event.body is None for event in store.list())
    assert c.body == BODY and a.id != c.id


def test_prune_deletes_in_batches_what_is_past_retention(store: EventStore, clock: Clock) -> None:
    for number in range(7):
        stored(store, f"old-{number}")
    clock.advance(timedelta(days=7, seconds=1).total_seconds())
    kept = stored(store, "recent")

    deleted = store.prune(timedelta(days=7), batch=3)

    assert deleted == 7
    assert [event.event_id for event in store.list()] == ["recent"]
    assert store.get(kept.id) == kept
    assert store.prune() == 0
    # Past the retention, a delivery of a pruned event is a new event again.
    assert store.store("stripe", "old-0", "payment_intent.succeeded", BODY)[1]


# -- the migration --------------------------------------------------------------------------------


def test_the_migration_adds_the_table_and_its_downgrade_removes_it(ledger_url: str) -> None:
    config = schema.alembic_config(ledger_url)
    engine = create_ledger_engine(ledger_url)

    def tables_and_indexes() -> tuple[bool, set[str]]:
        inspector = inspect(engine)
        if not inspector.has_table("webhook_events"):
            return False, set()
        # PostgreSQL also lists the index behind the unique constraint: the constraints are added here.
        indexes = {str(index["name"]) for index in inspector.get_indexes("webhook_events")}
        uniques = {str(unique["name"]) for unique in inspector.get_unique_constraints("webhook_events")}
        return True, {name for name in indexes if name.startswith("ix_")} | uniques

    try:
        command.downgrade(config, "0005")
        assert schema.current_revision(engine) == "0005"
        assert tables_and_indexes() == (False, set())
    finally:
        schema.upgrade(ledger_url)
    try:
        assert schema.current_revision(engine) == schema.head_revision()
        assert tables_and_indexes() == (
            True,
            {
                "ix_webhook_events_received_at",
                "ix_webhook_events_provider_received_at",
                "ix_webhook_events_operation_id",
                "uq_webhook_events_provider_event_id",
            },
        )
        store = EventStore(engine)
        assert store.store("stripe", "evt_after", "invoice.paid", BODY)[1]
    finally:
        engine.dispose()
