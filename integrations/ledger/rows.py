"""The ledger's rows and statements: how records, new operations and batch items become the values of
the ``operations`` table and come back, and the statements built once with their values bound later."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Insert, Table, Update, bindparam, insert, update
from sqlalchemy.dialects import postgresql, sqlite

from integrations.ledger.models import Operation, OperationStatus
from integrations.ledger.records import NewOperation, OperationRecord, dump_items, load_items

table = cast(Table, Operation.__table__)


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


@cache
def insert_if_absent(dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING``: a taken key inserts nothing instead of failing the statement,
    which on PostgreSQL would abort the caller's whole transaction."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing().returning(table.c.id)
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing().returning(table.c.id)
    raise ValueError(f"the ledger runs on PostgreSQL or SQLite, not {dialect}")


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
    }


def row_values(record: OperationRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in COLUMNS}
    values["status"] = record.status.value
    values["items"] = dump_items(record.items)
    return values


def record_of(row: Any) -> OperationRecord:
    values = dict(row)
    values["status"] = OperationStatus(values["status"])
    values["items"] = load_items(values["items"])
    return OperationRecord(**values)


COLUMNS = tuple(column.name for column in table.columns)
