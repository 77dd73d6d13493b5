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
from typing import Any

from sqlalchemy import (
    Engine,
    Select,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
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
from integrations.ledger.models import ENDED_BADLY, OperationStatus
from integrations.ledger.records import Items, NewOperation, OperationRecord, dump_items
from integrations.ledger.rows import (
    INSERT,
    insert_if_absent,
    new_row,
    record_of,
    row_values,
    storable,
    table,
    takeover_values,
    update_statement,
)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        query = select(table).where(table.c.provider == provider, table.c.idempotency_key == idempotency_key)
        with self._begin() as connection:
            row = connection.execute(query).mappings().first()
        return record_of(row) if row else None

    def get(self, operation_id: str) -> OperationRecord | None:
        with self._begin() as connection:
            row = connection.execute(select(table).where(table.c.id == operation_id)).mappings().first()
        return record_of(row) if row else None

    def dead_letters(self, provider: str | None = None, limit: int = 1000) -> list[OperationRecord]:
        """Failed, dead and partial operations, newest first."""
        query = select(table).where(table.c.status.in_(ENDED_BADLY))
        if provider is not None:
            query = query.where(table.c.provider == provider)
        query = query.order_by(table.c.finished_at.desc(), table.c.id).limit(limit)
        with self._begin() as connection:
            return [record_of(row) for row in connection.execute(query).mappings()]

    def stranded(self, before: datetime, limit: int = 1000) -> list[OperationRecord]:
        """Operations whose message should have come by ``before`` and may have been lost with the broker:
        queued and due (their next attempt, else their last change, before it), or running on a lease
        that ran out before it; and not sent again by the sweeper since. Longest waiting first."""
        due = func.coalesce(table.c.next_attempt_at, table.c.updated_at)
        query = (
            select(table)
            .where(
                or_(
                    and_(table.c.status == OperationStatus.QUEUED.value, due < before),
                    and_(table.c.status == OperationStatus.RUNNING.value, table.c.lease_expires_at < before),
                ),
                or_(table.c.swept_at.is_(None), table.c.swept_at < before),
            )
            .order_by(due)
            .limit(limit)
        )
        with self._begin() as connection:
            return [record_of(row) for row in connection.execute(query).mappings()]

    def mark_swept(self, record: OperationRecord, before: datetime) -> OperationRecord | None:
        """Note that the sweeper sends ``record``'s message again; ``None`` if the row changed since it was
        read, or another sweeper marked it first. The version is kept: a worker's claim or finish in
        flight still wins."""
        now = self.clock()
        statement = (
            update(table)
            .where(
                table.c.id == record.id,
                table.c.version == record.version,
                or_(table.c.swept_at.is_(None), table.c.swept_at < before),
            )
            .values(swept_at=now)
        )
        with self._begin() as connection:
            if connection.execute(statement).rowcount != 1:
                return None
        return replace(record, swept_at=now)

    def count_by_status(self, provider: str | None = None) -> dict[str, int]:
        query = select(table.c.status, func.count()).group_by(table.c.status)
        if provider is not None:
            query = query.where(table.c.provider == provider)
        with self._begin() as connection:
            return {str(status): int(count) for status, count in connection.execute(query).all()}

    def attempts_by_provider(self) -> dict[str, int]:
        query = select(table.c.provider, func.sum(table.c.attempts)).group_by(table.c.provider)
        with self._begin() as connection:
            return {str(provider): int(total or 0) for provider, total in connection.execute(query).all()}

    # -- writes ----------------------------------------------------------------------------------

    def start(
        self, new: NewOperation, *, lease: timedelta, items: Items | None = None
    ) -> OperationRecord | None:
        """Insert a new operation as running its first attempt; ``None`` if the key is already taken.
        ``items``: a batch's item states, as this attempt starts them."""
        now = self.clock()
        values = new_row(new, now) | {
            "status": OperationStatus.RUNNING.value,
            "attempts": 1,
            "started_at": now,
            "lease_expires_at": now + lease,
            "items": dump_items(items),
        }
        try:
            with self._begin() as connection:
                connection.execute(INSERT, values)
        except IntegrityError:
            return None
        return record_of(values)

    def enqueue(
        self, new: NewOperation, *, connection: Connection | None = None
    ) -> tuple[OperationRecord, bool]:
        """Insert a new operation as queued, to be sent: the row and True; or, when its key is taken, the
        row that holds it and False. On ``connection`` (the caller's, on this ledger's database) the row
        commits or rolls back with the caller's transaction; a taken key does not abort that transaction."""
        values = new_row(new, self.clock())
        find = select(table).where(
            table.c.provider == new.provider, table.c.idempotency_key == new.idempotency_key
        )
        if connection is not None:
            return self._enqueue_on(connection, values, find)
        with self._begin() as own:
            return self._enqueue_on(own, values, find)

    @staticmethod
    def _enqueue_on(
        connection: Connection, values: dict[str, Any], find: Select[Any]
    ) -> tuple[OperationRecord, bool]:
        statement = insert_if_absent(connection.dialect.name)
        # Whether a row came back through RETURNING: rowcount is not reliable for this statement.
        if connection.execute(statement, values).first() is not None:
            return record_of(values), True
        row = connection.execute(find).mappings().first()
        assert row is not None  # the key was taken, and rows are never deleted while their key is in use
        return record_of(row), False

    def record_invalid(self, new: NewOperation, error: ErrorInfo) -> OperationRecord:
        """Record a message that broke the contract. It binds its key only when the key is still free."""
        now = self.clock()
        values = new_row(new, now) | {
            "status": OperationStatus.FAILED.value,
            "error": error.model_dump(mode="json"),
            "finished_at": now,
        }
        try:
            with self._begin() as connection:
                connection.execute(INSERT, values)
        except IntegrityError:
            values |= {"idempotency_key": None, "id": str(uuid.uuid4())}
            with self._begin() as connection:
                connection.execute(INSERT, values)
        return record_of(values)

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
            values |= takeover_values(takeover) | {"attempts": 1}
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
            row = new_row(new, now) | {
                "waiting": reason,
                "next_attempt_at": until,
                "items": dump_items(items),
            }
            try:
                with self._begin() as connection:
                    connection.execute(INSERT, row)
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
            values |= takeover_values(new) | {"request_id": new.request_id, "attempts": 0}
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
        values = {k: v for k, v in row_values(before).items() if k != "id"} | {"version": current.version + 1}
        return self._compare_and_set(current, values) is not None

    def prune(self, *, retention: timedelta, dead_letter_retention: timedelta) -> int:
        """Delete ended operations past their retention; returns how many rows went."""
        now = self.clock()
        succeeded = delete(table).where(
            table.c.status == OperationStatus.SUCCEEDED, table.c.finished_at < now - retention
        )
        ended_badly = delete(table).where(
            table.c.status.in_(ENDED_BADLY), table.c.finished_at < now - dead_letter_retention
        )
        with self._begin() as connection:
            return sum(connection.execute(statement).rowcount for statement in (succeeded, ended_badly))

    def _compare_and_set(self, record: OperationRecord, values: dict[str, Any]) -> OperationRecord | None:
        statement = update_statement(tuple(sorted(values)))
        params = {f"set_{name}": value for name, value in values.items()} | {
            "match_id": record.id,
            "match_version": record.version,
        }
        with self._begin() as connection:
            if connection.execute(statement, params).rowcount != 1:
                return None
        return record_of(row_values(record) | values)
