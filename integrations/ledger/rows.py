"""The ledger's rows and statements: how records, new operations, batch items and attempt history entries
become the values of the ``operations`` table and come back, and the statements built once with their
values bound later."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Insert, Table, Update, and_, bindparam, case, func, insert, or_, update
from sqlalchemy.dialects import postgresql, sqlite

from integrations.ledger.models import Operation, OperationStatus
from integrations.ledger.records import (
    AttemptEntry,
    History,
    NewOperation,
    OperationRecord,
    dump_items,
    load_items,
)

table = cast(Table, Operation.__table__)

# An operation's history keeps its last this many attempts: the default retry budget (8) twice over, so a
# replayed dead letter still shows the attempts that killed it, in a row of a few kilobytes at most.
HISTORY_LIMIT = 16
# An attempt's error message in the history is cut to this many characters (the row's error has it whole).
MAX_HISTORY_ERROR = 300


def storable(value: Any) -> Any:
    """A value as the ledger can keep it: NUL characters (which PostgreSQL refuses) replaced. ``finish``
    applies it to what the provider answered; a refused message is stored through it as well. (A payload
    with a NUL is refused, never changed: its fingerprint must be the caller's.)"""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(item) for item in value]
    return value


# Statements built once, values bound at execution: building one per call costs more than running it.
INSERT = insert(table)


def _upsert(dialect: str) -> postgresql.Insert | sqlite.Insert:
    """The ``INSERT`` of ``dialect`` that takes ``ON CONFLICT`` clauses."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"the ledger runs on PostgreSQL or SQLite, not {dialect}")


@cache
def insert_if_absent(dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING``: a taken key inserts nothing instead of failing the statement,
    which on PostgreSQL would abort the caller's whole transaction."""
    return _upsert(dialect).on_conflict_do_nothing().returning(table.c.id)


@cache
def claim_or_start(dialect: str) -> Insert:
    """``INSERT`` a new operation running its first attempt; or, when its key is taken by a queued
    operation of the same fingerprint whose next attempt is due, ``UPDATE`` that row to run its next
    attempt; ``RETURNING`` the row either way, and nothing when neither applies (the row is then read and
    the idempotency rules decide). One statement, atomic on both engines: PostgreSQL locks the row it
    updates, and SQLite has one writer. The values of a new row are bound by name, with ``now``,
    ``due_waiting`` (until when a guard's wait counts as over: now and its tolerance) and
    ``request_id_given`` (the message's own request id, kept over the row's)."""
    statement = _upsert(dialect)
    new = statement.excluded
    now = bindparam("now", type_=table.c.updated_at.type)
    due = case(
        (table.c.waiting.is_(None), now), else_=bindparam("due_waiting", type_=table.c.updated_at.type)
    )
    return statement.on_conflict_do_update(
        index_elements=[table.c.provider, table.c.idempotency_key],
        set_={
            "status": OperationStatus.RUNNING.value,
            "attempts": table.c.attempts + 1,
            "version": table.c.version + 1,
            "request_id": func.coalesce(
                bindparam("request_id_given", type_=table.c.request_id.type),
                table.c.request_id,
                new.request_id,
            ),
            "started_at": new.started_at,
            "updated_at": new.updated_at,
            "lease_expires_at": new.lease_expires_at,
            "next_attempt_at": None,
            "waiting": None,
        },
        where=and_(
            table.c.status == OperationStatus.QUEUED.value,
            table.c.fingerprint == new.fingerprint,
            or_(table.c.next_attempt_at.is_(None), table.c.next_attempt_at <= due),
        ),
    ).returning(*table.c)


@cache
def update_statement(columns: tuple[str, ...]) -> Update:
    """``UPDATE operations SET <columns> WHERE id = :match_id AND version = :match_version``."""
    return (
        update(table)
        .where(table.c.id == bindparam("match_id"), table.c.version == bindparam("match_version"))
        .values({name: bindparam(f"set_{name}") for name in columns})
    )


def new_row(new: NewOperation, now: datetime) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "provider": new.provider,
        "operation": new.operation,
        "idempotency_key": new.idempotency_key,
        "fingerprint": new.fingerprint,
        "payload": new.payload,
        "request_id": new.request_id,
        "task_id": new.task_id,
        "status": OperationStatus.QUEUED.value,
        "attempts": 0,
        "replays": 0,
        "version": 1,
        "error": None,
        "response": None,
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
        "next_attempt_at": None,
        "lease_expires_at": None,
        "waiting": None,
        "items": None,
        "swept_at": None,
        "history": None,
        "conflicts": 0,
        "last_conflict_at": None,
        "discarded_at": None,
        "discarded_by": None,
        "discard_reason": None,
        "reference": None,
    }


def takeover_values(new: NewOperation) -> dict[str, Any]:
    """The columns a valid request rewrites when it takes over the row of an invalid one."""
    return {
        "operation": new.operation,
        "fingerprint": new.fingerprint,
        "payload": new.payload,
        "task_id": new.task_id,
        "error": None,
        "finished_at": None,
        "discarded_at": None,
        "discarded_by": None,
        "discard_reason": None,
    }


def ended_attempt(
    record: OperationRecord,
    now: datetime,
    status: OperationStatus,
    error: dict[str, Any] | None,
    response: Any,
) -> AttemptEntry:
    """The entry of the attempt ``record`` (as claimed) stands for, ending now with ``status``."""
    status_code = error.get("status_code") if error else None
    if status_code is None and isinstance(response, dict):
        answered = response.get("status_code")
        status_code = answered if isinstance(answered, int) and not isinstance(answered, bool) else None
    outcome = status.value
    if status is OperationStatus.QUEUED:  # another attempt follows: after a failure, or a batch's next chunk
        outcome = "retry" if error else "continued"
    started = record.started_at
    return {
        "attempt": record.attempts,
        "started_at": started.isoformat() if started else None,
        "seconds": round(max(0.0, (now - started).total_seconds()), 3) if started else None,
        "outcome": outcome,
        "status_code": status_code,
        "error_type": str(error["type"]) if error else None,
        "error": str(error["message"])[:MAX_HISTORY_ERROR] if error else None,
    }


def lost_attempt(record: OperationRecord) -> AttemptEntry:
    """The entry of a running attempt whose lease ran out with no outcome: its worker was lost."""
    return {
        "attempt": record.attempts,
        "started_at": record.started_at.isoformat() if record.started_at else None,
        "seconds": None,
        "outcome": "lost",
        "status_code": None,
        "error_type": None,
        "error": None,
    }


def with_entry(history: History, entry: AttemptEntry) -> list[AttemptEntry]:
    """``history`` and ``entry``, as the ``history`` column keeps them: the last ``HISTORY_LIMIT``."""
    return [*history, entry][-HISTORY_LIMIT:]


def row_values(record: OperationRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in COLUMNS}
    values["status"] = record.status.value
    values["items"] = dump_items(record.items)
    values["history"] = list(record.history) or None
    return values


def record_of(row: Any) -> OperationRecord:
    values = dict(row)
    values["status"] = OperationStatus(values["status"])
    values["items"] = load_items(values["items"])
    values["history"] = tuple(values["history"] or ())
    return OperationRecord(**values)


TABLE_COLUMNS = tuple(table.columns)
COLUMNS = tuple(column.name for column in TABLE_COLUMNS)
