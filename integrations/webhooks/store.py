"""Inbound webhook events in the ledger's database: stored once however often they are delivered.

A provider delivers an event at least once, and may deliver it to several receivers at the same moment:
``EventStore.store`` is one ``INSERT ... ON CONFLICT DO NOTHING`` on the unique (provider, event id), so
of any number of concurrent deliveries exactly one stores the event and is told it is new; the others get
the stored row. ``store_all`` stores the events of one delivery (SendGrid and HubSpot batch several in
one body) the same way, each, in one transaction. The other writes are one statement each that commits
by itself, as the ledger's are; SQLAlchemy errors become ``LedgerUnavailable`` here.

The body is kept as bytes (a ``LargeBinary`` column: ``bytea`` on PostgreSQL, a BLOB on SQLite), not as
text or JSON: a JSON column would re-encode it (JSONB reorders keys and drops whitespace) while a text
column would need the bytes to be UTF-8, which JSON parsers do not all require. An event that was a
delivery's whole body is kept as the bytes received, over which its signature can be checked again. An
event that was an element of an array body is kept as that element's canonical JSON
(``verify.canonical``: compact, keys sorted), whatever the batch it came in: the signature covered the
whole delivery and was checked when it was received, which storing it attests.
"""

from __future__ import annotations

import base64
import builtins
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Insert, Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from integrations.errors import ErrorInfo, LedgerUnavailable
from integrations.ledger.engine import Database
from integrations.ledger.models import MAX_KEY_LENGTH, WebhookEvent
from integrations.ledger.rows import storable

events = cast(Table, WebhookEvent.__table__)

# How long an event is kept after it was received, unless the caller says otherwise: the window in
# which a delivery of it again is recognised as a duplicate.
DEFAULT_RETENTION = timedelta(days=7)
# Rows deleted per statement when pruning, so no statement holds locks on a large part of the table.
PRUNE_BATCH = 1000
MAX_PROVIDER_LENGTH = 64
MAX_TYPE_LENGTH = 255

# Every column but the body: what listings read.
_LISTED = tuple(column for column in events.columns if column.name != "body")


class EventStatus(StrEnum):
    """Where an event's handling stands."""

    RECEIVED = "received"  # stored; its handling has not ended (a failed attempt to be retried included)
    HANDLED = "handled"  # its handler ran to the end
    UNHANDLED = "unhandled"  # no handler is registered for its type
    FAILED = "failed"  # its handler refused it for good
    DEAD = "dead"  # its handler's retries ran out

    @property
    def ended(self) -> bool:
        return self is not EventStatus.RECEIVED


class Relation(StrEnum):
    """How an event stands to the operation it names: it says the operation took effect, or did not."""

    CONFIRMS = "confirms"
    CONTRADICTS = "contradicts"


@dataclass(frozen=True)
class EventRecord:
    """A stored event, detached from any database session. ``id`` is the ledger's own; ``event_id`` the
    provider's. ``body`` is the bytes received; ``None`` in listings, which leave bodies in the database."""

    id: str
    provider: str
    event_id: str
    type: str
    received_at: datetime
    status: EventStatus
    attempts: int
    error: dict[str, Any] | None
    handled_at: datetime | None
    operation_id: str | None
    relation: Relation | None
    body: bytes | None = None

    def to_json(self, *, with_body: bool = False) -> dict[str, Any]:
        """The record as operators see it (``integrations events list|show --json``). With ``with_body``:
        the body as text when it is UTF-8, else as ``body_base64``."""
        data = asdict(self)
        del data["body"]
        data["status"] = self.status.value
        data["relation"] = self.relation.value if self.relation else None
        data["received_at"] = self.received_at.isoformat()
        data["handled_at"] = self.handled_at.isoformat() if self.handled_at else None
        if with_body and self.body is not None:
            text = body_text(self.body)
            if text is None:
                data["body_base64"] = base64.b64encode(self.body).decode("ascii")
            else:
                data["body"] = text
        return data


def body_text(body: bytes) -> str | None:
    """``body`` as text if it is UTF-8, else ``None``."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class NewEvent:
    """An event to store: the provider's id and type of it, and the bytes the ledger keeps as its body."""

    event_id: str
    type: str
    body: bytes = field(repr=False)


@cache
def _insert_if_absent(dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING id``: a duplicate inserts nothing and returns no row."""
    if dialect == "postgresql":
        return postgresql.insert(events).on_conflict_do_nothing().returning(events.c.id)
    if dialect == "sqlite":
        return sqlite.insert(events).on_conflict_do_nothing().returning(events.c.id)
    raise ValueError(f"the ledger runs on PostgreSQL or SQLite, not {dialect}")


def _record_of(row: Mapping[Any, Any]) -> EventRecord:
    values = dict(row)
    values["status"] = EventStatus(values["status"])
    values["relation"] = Relation(values["relation"]) if values["relation"] else None
    if values.get("body") is not None:
        values["body"] = bytes(values["body"])
    return EventRecord(**values)


def _checked_name(provider: str, what: str, value: str, longest: int) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"webhook event of provider {provider!r}: its {what} is missing or not a string")
    if len(value) > longest:
        raise ValueError(
            f"webhook event of provider {provider!r}: its {what} is {len(value)} characters long; the "
            f"ledger keeps at most {longest}"
        )
    if "\x00" in value:
        raise ValueError(f"webhook event of provider {provider!r}: its {what} contains a NUL character")
    return value


def _checked(provider: str, event: NewEvent) -> None:
    _checked_name(provider, "provider name", provider, MAX_PROVIDER_LENGTH)
    _checked_name(provider, "event id", event.event_id, MAX_KEY_LENGTH)
    _checked_name(provider, f"type (event {event.event_id!r})", event.type, MAX_TYPE_LENGTH)
    if not isinstance(event.body, bytes | bytearray | memoryview):
        raise ValueError(
            f"webhook event {event.event_id!r} of provider {provider!r}: its body must be the bytes "
            f"received, not {builtins.type(event.body).__name__}"
        )


def _stored(
    connection: Connection,
    statement: Insert,
    provider: str,
    event: NewEvent,
    received_at: datetime,
    where: str,
) -> tuple[EventRecord, bool]:
    """Insert ``event`` unless (provider, event id) is stored: (its record, whether it is new)."""
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "provider": provider,
        "event_id": event.event_id,
        "type": event.type,
        "received_at": received_at.astimezone(UTC),
        "body": bytes(event.body),
        "status": EventStatus.RECEIVED.value,
        "attempts": 0,
        "error": None,
        "handled_at": None,
        "operation_id": None,
        "relation": None,
    }
    find = select(events).where(events.c.provider == provider, events.c.event_id == event.event_id)
    # Twice at most: the stored row may be pruned between the refused insert and the read.
    for _ in range(2):
        # Whether a row came back through RETURNING: rowcount is not reliable for this statement.
        if connection.execute(statement, values).first() is not None:
            return _record_of(values), True
        row = connection.execute(find).mappings().first()
        if row is not None:
            return _record_of(row), False
    raise LedgerUnavailable(
        f"webhook event {event.event_id!r} of provider {provider!r} was neither stored nor found in the "
        f"ledger at {where}: pruned as it was delivered again; deliver it again"
    )


class EventStore(Database):
    """The inbound webhook events, in the ledger's database (table ``webhook_events``)."""

    # -- writes ----------------------------------------------------------------------------------

    def store(
        self,
        provider: str,
        event_id: str,
        type: str,
        body: bytes,
        received_at: datetime | None = None,
    ) -> tuple[EventRecord, bool]:
        """Store an event as received: the record and True; or, when (provider, event_id) is already
        stored, the stored record (with the body first received) and False. ``received_at``: now unless
        given. A ``ValueError`` names what is wrong with an event the ledger cannot keep."""
        [stored] = self.store_all(provider, [NewEvent(event_id, type, body)], received_at)
        return stored

    def store_all(
        self, provider: str, new: Sequence[NewEvent], received_at: datetime | None = None
    ) -> builtins.list[tuple[EventRecord, bool]]:
        """Store the events of one delivery, as ``store`` does each, in one transaction: all of them or,
        on a ``LedgerUnavailable``, none (the provider delivers again). The answers are in the order of
        ``new``; an event listed twice is new the first time only.

        The inserts run in the order of the events' ids, whatever ``new``'s order: two deliveries of
        overlapping batches at once wait on each other's rows in the same order, never in a deadlock."""
        for event in new:
            _checked(provider, event)
        received_at = received_at if received_at is not None else self.clock()
        if received_at.tzinfo is None:
            raise ValueError(f"webhook events of provider {provider!r}: received_at must be timezone-aware")
        answers: dict[int, tuple[EventRecord, bool]] = {}
        order = sorted(range(len(new)), key=lambda index: new[index].event_id)
        with self._transaction() as connection:
            statement = _insert_if_absent(connection.dialect.name)
            for index in order:
                answers[index] = _stored(connection, statement, provider, new[index], received_at, self.where)
        return [answers[index] for index in range(len(new))]

    def reset(self, id: str, ended: EventStatus) -> EventRecord | None:
        """The event ``id``, whose handling ended as ``ended``, back to ``received`` with no attempt
        counted, no error and no operation; ``None`` if it is no longer as it was (compare-and-set)."""
        statement = (
            update(events)
            .where(events.c.id == id, events.c.status == EventStatus(ended).value)
            .values(
                status=EventStatus.RECEIVED.value,
                attempts=0,
                error=None,
                handled_at=None,
                operation_id=None,
                relation=None,
            )
        )
        with self._begin() as connection:
            changed = connection.execute(statement).rowcount
        return self.get(id) if changed else None

    def mark(
        self,
        id: str,
        status: EventStatus,
        *,
        error: ErrorInfo | None = None,
        operation_id: str | None = None,
        relation: Relation | None = None,
    ) -> EventRecord | None:
        """Record one handling pass of the event ``id``: its outcome (``received`` again for a failed
        attempt to be retried), its error (``None`` clears the last one), and, given both, the operation
        it confirms or contradicts. ``None`` if the event's handling had already ended, or it is gone.

        One statement that counts the attempt and touches only an event still ``received``: two workers
        handling the same event cannot both end it, and a late failure never overwrites an outcome."""
        if (operation_id is None) != (relation is None):
            raise ValueError(
                f"webhook event {id}: name the operation and how the event stands to it (confirms or "
                "contradicts) together, or neither"
            )
        now = self.clock()
        values: dict[str, Any] = {
            "status": EventStatus(status).value,
            "attempts": events.c.attempts + 1,
            "error": storable(error.model_dump(mode="json")) if error else None,
            "handled_at": now if EventStatus(status).ended else None,
        }
        if operation_id is not None and relation is not None:
            values |= {"operation_id": operation_id, "relation": Relation(relation).value}
        statement = (
            update(events)
            .where(events.c.id == id, events.c.status == EventStatus.RECEIVED.value)
            .values(values)
            .returning(*_LISTED)
        )
        with self._begin() as connection:
            row = connection.execute(statement).mappings().first()
        return _record_of(row) if row is not None else None

    def prune(self, retention: timedelta = DEFAULT_RETENTION, *, batch: int = PRUNE_BATCH) -> int:
        """Delete the events received longer than ``retention`` ago, ``batch`` rows per statement;
        returns how many went. A delivery of one of them afterwards stores it as new."""
        cutoff = self.clock() - retention
        doomed = select(events.c.id).where(events.c.received_at < cutoff).limit(batch)
        statement = delete(events).where(events.c.id.in_(doomed))
        deleted = 0
        with self._begin() as connection:
            while True:
                count = connection.execute(statement).rowcount
                deleted += count
                if count < batch:
                    return deleted

    # -- reads -----------------------------------------------------------------------------------

    def get(self, id: str) -> EventRecord | None:
        """The event whose ledger id is ``id``, with its body."""
        with self._begin() as connection:
            row = connection.execute(select(events).where(events.c.id == id)).mappings().first()
        return _record_of(row) if row is not None else None

    def find(self, provider: str, event_id: str) -> EventRecord | None:
        """The event ``provider`` sent with its id ``event_id``, with its body."""
        query = select(events).where(events.c.provider == provider, events.c.event_id == event_id)
        with self._begin() as connection:
            row = connection.execute(query).mappings().first()
        return _record_of(row) if row is not None else None

    def list(
        self,
        *,
        provider: str | None = None,
        type: str | None = None,
        status: EventStatus | None = None,
        since: datetime | None = None,
        received_before: datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[EventRecord]:
        """Events newest first, without their bodies: of ``provider``, of ``type``, in ``status``,
        received since ``since`` and before ``received_before``."""
        query = select(*_LISTED)
        if provider is not None:
            query = query.where(events.c.provider == provider)
        if type is not None:
            query = query.where(events.c.type == type)
        if status is not None:
            query = query.where(events.c.status == EventStatus(status).value)
        if since is not None:
            query = query.where(events.c.received_at >= since)
        if received_before is not None:
            query = query.where(events.c.received_at < received_before)
        query = query.order_by(events.c.received_at.desc(), events.c.id).limit(limit)
        with self._begin() as connection:
            return [_record_of(row) for row in connection.execute(query).mappings()]

    def for_operation(self, operation_id: str) -> builtins.list[EventRecord]:
        """The events that confirm or contradict the operation ``operation_id``, oldest first, without
        their bodies."""
        query = (
            select(*_LISTED)
            .where(events.c.operation_id == operation_id)
            .order_by(events.c.received_at, events.c.id)
        )
        with self._begin() as connection:
            return [_record_of(row) for row in connection.execute(query).mappings()]
