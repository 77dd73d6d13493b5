"""Reads and writes of the ledger.

Every write is one statement that compares the row's ``version``: a claim or a finish either wins
outright or changes nothing, on SQLite and PostgreSQL alike, with no lock held across a provider call.
SQLAlchemy errors become ``LedgerUnavailable`` here, so callers deal with one exception.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    Engine,
    Insert,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from integrations.errors import ErrorInfo, LedgerUnavailable
from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.models import ENDED_BADLY, Operation, OperationStatus
from integrations.ledger.records import (
    Items,
    NewOperation,
    OperationRecord,
    dump_items,
    load_items,
)

Clock = Callable[[], datetime]
_table = cast(Table, Operation.__table__)


def utcnow() -> datetime:
    return datetime.now(UTC)


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


class Ledger:
    """The operation ledger on one SQLAlchemy engine."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        # Every write is one statement, so each commits by itself: no BEGIN/COMMIT round trips.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.clock = clock

    @classmethod
    def connect(cls, url: str, *, clock: Clock = utcnow) -> Ledger:
        return cls(create_ledger_engine(url), clock=clock)

    @property
    def where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self._autocommit.connect() as connection:
                yield connection
        except (OperationalError, InterfaceError, ProgrammingError, DisconnectionError, PoolTimeout) as exc:
            # The database cannot be reached or lacks the schema: worth waiting for. Other errors (bad
            # data) are not, and go up to the pipeline, which ends the operation after a few tries.
            raise LedgerUnavailable(
                f"ledger at {self.where}: {type(exc).__name__}: {str(exc).splitlines()[0]} "
                "(is the database up, and has `integrations db upgrade` been run?)"
            ) from exc

    # -- reads -----------------------------------------------------------------------------------

    def find(self, provider: str, idempotency_key: str) -> OperationRecord | None:
        query = select(_table).where(
            _table.c.provider == provider, _table.c.idempotency_key == idempotency_key
        )
        with self._begin() as connection:
            row = connection.execute(query).mappings().first()
        return _record(row) if row else None

    def get(self, operation_id: str) -> OperationRecord | None:
        with self._begin() as connection:
            row = connection.execute(select(_table).where(_table.c.id == operation_id)).mappings().first()
        return _record(row) if row else None

    def dead_letters(self, provider: str | None = None, limit: int = 1000) -> list[OperationRecord]:
        """Failed, dead and partial operations, newest first."""
        query = select(_table).where(_table.c.status.in_(ENDED_BADLY))
        if provider is not None:
            query = query.where(_table.c.provider == provider)
        query = query.order_by(_table.c.finished_at.desc(), _table.c.id).limit(limit)
        with self._begin() as connection:
            return [_record(row) for row in connection.execute(query).mappings()]

    def stranded(self, before: datetime, limit: int = 1000) -> list[OperationRecord]:
        """Operations whose message should have come by ``before`` and may have been lost with the broker:
        queued and due (their next attempt, else their last change, before it), or running on a lease
        that ran out before it; and not sent again by the sweeper since. Longest waiting first."""
        due = func.coalesce(_table.c.next_attempt_at, _table.c.updated_at)
        query = (
            select(_table)
            .where(
                or_(
                    and_(_table.c.status == OperationStatus.QUEUED.value, due < before),
                    and_(
                        _table.c.status == OperationStatus.RUNNING.value, _table.c.lease_expires_at < before
                    ),
                ),
                or_(_table.c.swept_at.is_(None), _table.c.swept_at < before),
            )
            .order_by(due)
            .limit(limit)
        )
        with self._begin() as connection:
            return [_record(row) for row in connection.execute(query).mappings()]

    def mark_swept(self, record: OperationRecord, before: datetime) -> OperationRecord | None:
        """Note that the sweeper sends ``record``'s message again; ``None`` if the row changed since it was
        read, or another sweeper marked it first. The version is kept: a worker's claim or finish in
        flight still wins."""
        now = self.clock()
        statement = (
            update(_table)
            .where(
                _table.c.id == record.id,
                _table.c.version == record.version,
                or_(_table.c.swept_at.is_(None), _table.c.swept_at < before),
            )
            .values(swept_at=now)
        )
        with self._begin() as connection:
            if connection.execute(statement).rowcount != 1:
                return None
        return replace(record, swept_at=now)

    def count_by_status(self, provider: str | None = None) -> dict[str, int]:
        query = select(_table.c.status, func.count()).group_by(_table.c.status)
        if provider is not None:
            query = query.where(_table.c.provider == provider)
        with self._begin() as connection:
            return {str(status): int(count) for status, count in connection.execute(query).all()}

    def attempts_by_provider(self) -> dict[str, int]:
        query = select(_table.c.provider, func.sum(_table.c.attempts)).group_by(_table.c.provider)
        with self._begin() as connection:
            return {str(provider): int(total or 0) for provider, total in connection.execute(query).all()}

    # -- writes ----------------------------------------------------------------------------------

    def start(
        self, new: NewOperation, *, lease: timedelta, items: Items | None = None
    ) -> OperationRecord | None:
        """Insert a new operation as running its first attempt; ``None`` if the key is already taken.
        ``items``: a batch's item states, as this attempt starts them."""
        now = self.clock()
        values = _new_row(new, now) | {
            "status": OperationStatus.RUNNING.value,
            "attempts": 1,
            "started_at": now,
            "lease_expires_at": now + lease,
            "items": dump_items(items),
        }
        try:
            with self._begin() as connection:
                connection.execute(_INSERT, values)
        except IntegrityError:
            return None
        return _record(values)

    def enqueue(
        self, new: NewOperation, *, connection: Connection | None = None
    ) -> tuple[OperationRecord, bool]:
        """Insert a new operation as queued, to be sent: the row and True; or, when its key is taken, the
        row that holds it and False. On ``connection`` (the caller's, on this ledger's database) the row
        commits or rolls back with the caller's transaction; a taken key does not abort that transaction."""
        values = _new_row(new, self.clock())
        find = select(_table).where(
            _table.c.provider == new.provider, _table.c.idempotency_key == new.idempotency_key
        )
        if connection is not None:
            return self._enqueue_on(connection, values, find)
        with self._begin() as own:
            return self._enqueue_on(own, values, find)

    @staticmethod
    def _enqueue_on(
        connection: Connection, values: dict[str, Any], find: Select[Any]
    ) -> tuple[OperationRecord, bool]:
        statement = _insert_if_absent(connection.dialect.name)
        # Whether a row came back through RETURNING: rowcount is not reliable for this statement.
        if connection.execute(statement, values).first() is not None:
            return _record(values), True
        row = connection.execute(find).mappings().first()
        assert row is not None  # the key was taken, and rows are never deleted while their key is in use
        return _record(row), False

    def record_invalid(self, new: NewOperation, error: ErrorInfo) -> OperationRecord:
        """Record a message that broke the contract. It binds its key only when the key is still free."""
        now = self.clock()
        values = _new_row(new, now) | {
            "status": OperationStatus.FAILED.value,
            "error": error.model_dump(mode="json"),
            "finished_at": now,
        }
        try:
            with self._begin() as connection:
                connection.execute(_INSERT, values)
        except IntegrityError:
            values |= {"idempotency_key": None, "id": str(uuid.uuid4())}
            with self._begin() as connection:
                connection.execute(_INSERT, values)
        return _record(values)

    def claim(
        self,
        record: OperationRecord,
        *,
        lease: timedelta,
        request_id: str,
        takeover: NewOperation | None = None,
        items: Items | None = None,
    ) -> OperationRecord | None:
        """Start the next attempt of ``record`` if nobody changed it since it was read; else ``None``.

        ``takeover``: a valid request that takes over the key of a request recorded as invalid; the row
        becomes its operation and the attempt count starts again. ``items``: a batch's item states, as
        this attempt starts them.
        """
        now = self.clock()
        values: dict[str, Any] = {
            "status": OperationStatus.RUNNING.value,
            "attempts": record.attempts + 1,
            "version": record.version + 1,
            "request_id": request_id,
            "started_at": now,
            "updated_at": now,
            "lease_expires_at": now + lease,
            "next_attempt_at": None,
            "waiting": None,
        }
        if items is not None:
            values["items"] = dump_items(items)
        if takeover is not None:
            values |= _takeover(takeover) | {"attempts": 1}
        return self._compare_and_set(record, values)

    def finish(
        self,
        record: OperationRecord,
        status: OperationStatus,
        *,
        response: Any = None,
        error: ErrorInfo | None = None,
        next_attempt_at: datetime | None = None,
        items: Items | None = None,
    ) -> OperationRecord | None:
        """End the attempt that ``record`` (as claimed) stands for; ``None`` if it was taken over. What the
        provider answered is kept with any NUL character replaced (see ``storable``)."""
        now = self.clock()
        values: dict[str, Any] = {
            "status": status.value,
            "version": record.version + 1,
            "updated_at": now,
            "lease_expires_at": None,
            "next_attempt_at": next_attempt_at,
            "waiting": None,
            "response": storable(response),
            "error": storable(error.model_dump(mode="json")) if error else None,
            "finished_at": now if status.terminal else None,
        }
        if items is not None:
            values["items"] = storable(dump_items(items))
        return self._compare_and_set(record, values)

    def record_wait(
        self,
        record: OperationRecord | None,
        *,
        reason: str,
        until: datetime,
        new: NewOperation | None = None,
        items: Items | None = None,
    ) -> None:
        """Note that the operation waits (a guard deferred it) and until when; no attempt is used.

        ``new``: the operation as the message describes it; inserted when there is no ``record`` yet, or
        taking over the row of an invalid request (whose attempt count starts again). ``items``: a batch's
        item states, for a new row or a takeover. Best effort: if another worker changed the row
        meanwhile, its newer state stands."""
        now = self.clock()
        if record is None:
            if new is None:
                raise ValueError("record_wait: a new operation needs `new`")
            row = _new_row(new, now) | {
                "waiting": reason,
                "next_attempt_at": until,
                "items": dump_items(items),
            }
            try:
                with self._begin() as connection:
                    connection.execute(_INSERT, row)
            except IntegrityError:
                pass
            return
        values: dict[str, Any] = {
            "status": OperationStatus.QUEUED.value,
            "version": record.version + 1,
            "updated_at": now,
            "waiting": reason,
            "next_attempt_at": until,
            "lease_expires_at": None,
        }
        if items is not None:
            values["items"] = dump_items(items)
        if new is not None:
            values |= _takeover(new) | {"request_id": new.request_id, "attempts": 0}
        self._compare_and_set(record, values)

    def requeue(self, record: OperationRecord, *, items: Items | None = None) -> OperationRecord | None:
        """Make an ended operation queued again with a fresh attempt budget (``dlq replay``), its batch
        items as given; ``None`` if the row changed since it was read."""
        values: dict[str, Any] = {
            "status": OperationStatus.QUEUED.value,
            "attempts": 0,
            "replays": record.replays + 1,
            "version": record.version + 1,
            "updated_at": self.clock(),
            "finished_at": None,
            "next_attempt_at": None,
            "error": None,
        }
        if items is not None:
            values["items"] = dump_items(items)
        return self._compare_and_set(record, values)

    def restore(self, before: OperationRecord, current: OperationRecord) -> bool:
        """Put back ``before`` over ``current`` (undo a replay whose message could not be sent); False if
        the row changed since ``current`` was read."""
        values = {k: v for k, v in _row_values(before).items() if k != "id"} | {
            "version": current.version + 1
        }
        return self._compare_and_set(current, values) is not None

    def prune(self, *, retention: timedelta, dead_letter_retention: timedelta) -> int:
        """Delete ended operations past their retention; returns how many rows went."""
        now = self.clock()
        succeeded = delete(_table).where(
            _table.c.status == OperationStatus.SUCCEEDED, _table.c.finished_at < now - retention
        )
        ended_badly = delete(_table).where(
            _table.c.status.in_(ENDED_BADLY), _table.c.finished_at < now - dead_letter_retention
        )
        with self._begin() as connection:
            return sum(connection.execute(statement).rowcount for statement in (succeeded, ended_badly))

    def _compare_and_set(self, record: OperationRecord, values: dict[str, Any]) -> OperationRecord | None:
        statement = _update_statement(tuple(sorted(values)))
        params = {f"set_{name}": value for name, value in values.items()} | {
            "match_id": record.id,
            "match_version": record.version,
        }
        with self._begin() as connection:
            if connection.execute(statement, params).rowcount != 1:
                return None
        return _record(_row_values(record) | values)


# Statements built once, values bound at execution: building one per call costs more than running it.
_INSERT = insert(_table)


@cache
def _insert_if_absent(dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING``: a taken key inserts nothing instead of failing the statement,
    which on PostgreSQL would abort the caller's whole transaction."""
    if dialect == "postgresql":
        return postgresql.insert(_table).on_conflict_do_nothing().returning(_table.c.id)
    if dialect == "sqlite":
        return sqlite.insert(_table).on_conflict_do_nothing().returning(_table.c.id)
    raise ValueError(f"the ledger runs on PostgreSQL or SQLite, not {dialect}")


@cache
def _update_statement(columns: tuple[str, ...]) -> Update:
    """``UPDATE operations SET <columns> WHERE id = :match_id AND version = :match_version``."""
    return (
        update(_table)
        .where(_table.c.id == bindparam("match_id"), _table.c.version == bindparam("match_version"))
        .values({name: bindparam(f"set_{name}") for name in columns})
    )


def _new_row(new: NewOperation, now: datetime) -> dict[str, Any]:
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


def _takeover(new: NewOperation) -> dict[str, Any]:
    """The columns a valid request rewrites when it takes over the row of an invalid one."""
    return {
        "operation": new.operation,
        "fingerprint": new.fingerprint,
        "payload": new.payload,
        "task_id": new.task_id,
        "error": None,
        "finished_at": None,
    }


def _row_values(record: OperationRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in _COLUMNS}
    values["status"] = record.status.value
    values["items"] = dump_items(record.items)
    return values


def _record(row: Any) -> OperationRecord:
    values = dict(row)
    values["status"] = OperationStatus(values["status"])
    values["items"] = load_items(values["items"])
    return OperationRecord(**values)


_COLUMNS = tuple(column.name for column in _table.columns)
