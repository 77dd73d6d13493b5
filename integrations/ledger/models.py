"""SQLAlchemy models of the ledger. The schema itself is created and changed by Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Idempotency keys, request ids and batch item keys: at most this long (the ledger's column).
MAX_KEY_LENGTH = 255


class OperationStatus(StrEnum):
    QUEUED = "queued"  # received, waiting for its (next) attempt
    RUNNING = "running"  # an attempt is in flight, under a lease
    SUCCEEDED = "succeeded"
    FAILED = (
        "failed"  # ended at once: invalid request, rejection, contract violation; a batch: no item succeeded
    )
    DEAD = "dead"  # retries exhausted: a dead letter
    PARTIAL = "partial"  # a batch whose items partly succeeded and partly failed for good

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def ended_badly(self) -> bool:
        """A dead letter: what `dlq list` shows, `dlq replay` accepts and the longer retention keeps."""
        return self in ENDED_BADLY


ENDED_BADLY = (OperationStatus.FAILED, OperationStatus.DEAD, OperationStatus.PARTIAL)
_TERMINAL = frozenset(
    {OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.DEAD, OperationStatus.PARTIAL}
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone and would hand back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("ledger timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONDocument = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    metadata = metadata


_HAS_CONFLICT = text("last_conflict_at IS NOT NULL")
_HAS_REFERENCE = text("reference IS NOT NULL")

# The rows of dlq list: ended failed, dead or partial, and not discarded. Its query says it in these words,
# with the statuses as literals, as the partial index has it: a database may read that index only then.
DEAD_LETTERS = text(
    f"status IN ({', '.join(repr(status.value) for status in ENDED_BADLY)}) AND discarded_at IS NULL"
)


class Operation(Base):
    """One logical operation. ``idempotency_key`` is NULL only for a message whose key itself was invalid."""

    __tablename__ = "operations"
    __table_args__ = (
        UniqueConstraint("provider", "idempotency_key"),
        Index(None, "status", "finished_at"),  # prune; the queries by status (queued, running, ...)
        Index(None, "created_at"),  # ops list, newest first
        Index(None, "task_id"),  # ops show by the Celery task id
        # ops conflicts; an inbound event's operation, by the object it made. Partial: most rows have
        # neither, and a row an index does not hold costs it no write.
        Index(None, "last_conflict_at", postgresql_where=_HAS_CONFLICT, sqlite_where=_HAS_CONFLICT),
        Index(None, "provider", "reference", postgresql_where=_HAS_REFERENCE, sqlite_where=_HAS_REFERENCE),
        # dlq list, newest first: the few dead letters among many successes (partial: only their rows).
        Index(
            "ix_operations_dead_letters",
            "finished_at",
            postgresql_where=DEAD_LETTERS,
            sqlite_where=DEAD_LETTERS,
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    operation: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(MAX_KEY_LENGTH))
    fingerprint: Mapped[str] = mapped_column(String(64))
    payload: Mapped[Any] = mapped_column(JSONDocument, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(MAX_KEY_LENGTH))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    replays: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by every write: updates compare it, so two workers can never both win a claim or a finish.
    version: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[Any] = mapped_column(JSONDocument, nullable=True)
    response: Mapped[Any] = mapped_column(JSONDocument, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Why a queued operation waits, when a guard deferred it: breaker_open, throttled, paused, ...
    waiting: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A batch operation's items, in order: [{key, status, attempts, error, response}] (see integrations.batch).
    items: Mapped[Any] = mapped_column(JSONDocument, nullable=True)
    # The id of the message that first brought the operation (what its caller's AsyncResult reads); a
    # message the sweeper sends again keeps it.
    task_id: Mapped[str | None] = mapped_column(String(MAX_KEY_LENGTH))
    # When the sweeper last sent the operation's message again (see integrations.sweeper).
    swept_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The last attempts, oldest first: [{attempt, started_at, seconds, outcome, status_code, error_type,
    # error}] (see records.AttemptEntry), written by the statement that ends each attempt.
    history: Mapped[Any] = mapped_column(JSONDocument, nullable=True)
    # Messages refused because they reused the key for another operation or payload: how many, and the last.
    # Counted without bumping ``version``: a conflict changes nothing a claim or a finish relies on.
    conflicts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_conflict_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A dead letter an operator settled with `dlq discard`: when, by whom, why. Its status stays what the
    # operation ended with, and its key stays taken.
    discarded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    discarded_by: Mapped[str | None] = mapped_column(String(255))
    discard_reason: Mapped[str | None] = mapped_column(Text)
    # The provider's id of what a succeeded single operation made (a Stripe PaymentIntent's ``pi_…``), as
    # its adapter reads it from the answer: how an inbound event that names only that object finds it.
    reference: Mapped[str | None] = mapped_column(String(MAX_KEY_LENGTH))


class OperatorAction(Base):
    """One operator action on the running system (``limits set``, ``breaker open``, ``dlq discard``, ...):
    who, when, on what, why, and what changed. Written by the operator commands, read by ``audit list``."""

    __tablename__ = "operator_actions"
    __table_args__ = (Index(None, "at"), Index(None, "action", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[Any] = mapped_column(JSONDocument, nullable=True)


class WebhookEvent(Base):
    """One inbound webhook event, stored once per (provider, the provider's event id) however often it
    is delivered, with how its handling went and the operation it confirms or contradicts. Read and
    written by ``integrations.webhooks.store``."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id"),
        Index(None, "received_at"),  # events list, newest first; pruning
        Index(None, "provider", "received_at"),  # events list --provider
        Index(None, "operation_id"),  # the events of an operation
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    type: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The bytes received, unchanged: a signature is over them, and a JSON column would re-encode them.
    body: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[Any] = mapped_column(JSONDocument, nullable=True)
    handled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # No foreign key: operations and events are pruned on retentions of their own.
    operation_id: Mapped[str | None] = mapped_column(String(36))
    relation: Mapped[str | None] = mapped_column(String(16))  # confirms | contradicts
