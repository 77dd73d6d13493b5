"""Reads and writes of the ledger.

Every write is one statement that compares the row's ``version``: a claim or a finish either wins
outright or changes nothing, on SQLite and PostgreSQL alike, with no lock held across a provider call.
The attempt history rides in the statement that ends each attempt, so it costs no statement of its own.
SQLAlchemy errors become ``LedgerUnavailable`` here, so callers deal with one exception.

Beside the operations, the ledger's database keeps the operators' actions (``operator_actions``).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Select,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (
    IntegrityError,
)

from integrations.errors import ErrorInfo
from integrations.ledger.engine import Database
from integrations.ledger.models import DEAD_LETTERS, ENDED_BADLY, OperationStatus, OperatorAction
from integrations.ledger.records import (
    ActionRecord,
    AuditAction,
    Items,
    NewOperation,
    OperationRecord,
    dump_items,
)
from integrations.ledger.rows import (
    COLUMNS,
    INSERT,
    TABLE_COLUMNS,
    claim_or_start,
    ended_attempt,
    insert_if_absent,
    lost_attempt,
    new_row,
    record_of,
    row_values,
    storable,
    table,
    takeover_values,
    update_statement,
    with_entry,
)

actions = cast(Table, OperatorAction.__table__)

# Put back by ``restore`` from the row as it is, not as it was: counted since, by statements of their own.
_KEPT_BY_RESTORE = frozenset({"id", "conflicts", "last_conflict_at"})


class Ledger(Database):
    """The operation ledger on one SQLAlchemy engine."""

    # -- reads -----------------------------------------------------------------------------------

    def find(self, provider: str, idempotency_key: str) -> OperationRecord | None:
        query = select(table).where(table.c.provider == provider, table.c.idempotency_key == idempotency_key)
        with self._begin() as connection:
            row = connection.execute(query).mappings().first()
        return record_of(row) if row else None

    def find_by_reference(self, provider: str, reference: str) -> OperationRecord | None:
        """The operation of ``provider`` whose success made the object ``reference`` (the provider's id of
        it, as the adapter read it from the answer); the first one if several got the same object back."""
        query = (
            select(table)
            .where(table.c.provider == provider, table.c.reference == reference)
            .order_by(table.c.created_at, table.c.id)
            .limit(1)
        )
        with self._begin() as connection:
            row = connection.execute(query).mappings().first()
        return record_of(row) if row else None

    def get(self, operation_id: str) -> OperationRecord | None:
        with self._begin() as connection:
            row = connection.execute(select(table).where(table.c.id == operation_id)).mappings().first()
        return record_of(row) if row else None

    def lookup(self, reference: str) -> list[OperationRecord]:
        """The operations whose id, or the id of the Celery task that first brought them, is ``reference``."""
        query = select(table).where(or_(table.c.id == reference, table.c.task_id == reference))
        with self._begin() as connection:
            return [
                record_of(row) for row in connection.execute(query.order_by(table.c.created_at)).mappings()
            ]

    def operations(
        self,
        *,
        provider: str | None = None,
        statuses: Collection[OperationStatus] = (),
        created_before: datetime | None = None,
        limit: int = 100,
    ) -> list[OperationRecord]:
        """Operations newest first: of ``provider``, in ``statuses``, created before ``created_before``."""
        query = select(table)
        if provider is not None:
            query = query.where(table.c.provider == provider)
        if statuses:
            query = query.where(table.c.status.in_([status.value for status in statuses]))
        if created_before is not None:
            query = query.where(table.c.created_at < created_before)
        query = query.order_by(table.c.created_at.desc(), table.c.id).limit(limit)
        with self._begin() as connection:
            return [record_of(row) for row in connection.execute(query).mappings()]

    def conflicted(
        self, *, provider: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[OperationRecord]:
        """Operations whose key later messages reused for another operation or payload, the latest
        conflict first; ``since``: only those with a conflict since then."""
        query = select(table).where(table.c.last_conflict_at.is_not(None), table.c.conflicts > 0)
        if provider is not None:
            query = query.where(table.c.provider == provider)
        if since is not None:
            query = query.where(table.c.last_conflict_at >= since)
        query = query.order_by(table.c.last_conflict_at.desc(), table.c.id).limit(limit)
        with self._begin() as connection:
            return [record_of(row) for row in connection.execute(query).mappings()]

    def dead_letters(
        self,
        provider: str | None = None,
        limit: int = 1000,
        *,
        error_type: str | None = None,
        since: datetime | None = None,
    ) -> list[OperationRecord]:
        """Failed, dead and partial operations not discarded, newest first; ``error_type``: whose error is
        of that type; ``since``: that ended since then."""
        query = select(table).where(DEAD_LETTERS)
        if provider is not None:
            query = query.where(table.c.provider == provider)
        if error_type is not None:
            query = query.where(table.c.error["type"].as_string() == error_type)
        if since is not None:
            query = query.where(table.c.finished_at >= since)
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

    def take(
        self, new: NewOperation, *, lease: timedelta, request_id: str | None, tolerance: timedelta
    ) -> OperationRecord | None:
        """Start ``new`` as running its first attempt, or claim the next attempt of the queued operation
        that holds its key with the same fingerprint, if that attempt is due (``tolerance``: how early a
        guard's wait may end); in one statement. ``request_id``: the message's own, kept over the row's.
        ``None``: neither was possible, and the row must be read (``find``) for the rules to decide."""
        now = self.clock()
        values = new_row(new, now) | {
            "status": OperationStatus.RUNNING.value,
            "attempts": 1,
            "started_at": now,
            "lease_expires_at": now + lease,
        }
        params = values | {"now": now, "due_waiting": now + tolerance, "request_id_given": request_id}
        statement = claim_or_start(self.engine.dialect.name)
        with self._begin() as connection:
            prepared = self._prepared(statement, column_keys=COLUMNS, returning=TABLE_COLUMNS)
            row = prepared.first(connection, params)
        return record_of(row) if row else None

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
        if record.status is OperationStatus.RUNNING:  # its lease ran out: the attempt's worker was lost
            values["history"] = with_entry(record.history, lost_attempt(record))
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
        reference: str | None = None,
    ) -> OperationRecord | None:
        """End the attempt that ``record`` (as claimed) stands for; ``None`` if it was taken over. What the
        provider answered is kept with any NUL character replaced (see ``storable``). A running ``record``'s
        attempt joins its history in the same statement; ending a queued one (no attempt in flight) adds
        none. ``reference``: the provider's id of what a succeeded operation made, written by the same
        statement (``None`` leaves the column as it is)."""
        now = self.clock()
        stored_error = storable(error.model_dump(mode="json")) if error else None
        values: dict[str, Any] = {
            "status": status.value,
            "version": record.version + 1,
            "updated_at": now,
            "lease_expires_at": None,
            "next_attempt_at": next_attempt_at,
            "waiting": None,
            "response": storable(response),
            "error": stored_error,
            "finished_at": now if status.terminal else None,
        }
        if items is not None:
            values["items"] = storable(dump_items(items))
        if reference is not None:
            values["reference"] = reference
        if record.status is OperationStatus.RUNNING:
            entry = ended_attempt(record, now, status, stored_error, response)
            values["history"] = with_entry(record.history, entry)
        return self._compare_and_set(record, values)

    def unclaim(
        self,
        record: OperationRecord,
        *,
        reason: str,
        until: datetime,
        items: Items | None = None,
    ) -> OperationRecord | None:
        """Give back the attempt ``record`` (as claimed) stands for, before any call: a guard said wait.
        The operation is queued again until ``until``, with the attempt not counted and ``reason`` kept
        (``ops show``). ``items``: a batch's item states as they were before the claim. ``None`` if the
        row changed since the claim."""
        now = self.clock()
        values: dict[str, Any] = {
            "status": OperationStatus.QUEUED.value,
            "attempts": record.attempts - 1,
            "version": record.version + 1,
            "updated_at": now,
            "waiting": reason,
            "next_attempt_at": until,
            "lease_expires_at": None,
        }
        if items is not None:
            values["items"] = dump_items(items)
        return self._compare_and_set(record, values)

    def record_conflict(self, provider: str, idempotency_key: str) -> None:
        """Count a message refused for reusing ``idempotency_key`` with another operation or payload, on the
        row that holds the key. One statement that leaves ``version`` (and ``updated_at``, which the
        sweeper reads) alone: a claim or finish in flight still wins."""
        statement = (
            update(table)
            .where(table.c.provider == provider, table.c.idempotency_key == idempotency_key)
            .values(conflicts=table.c.conflicts + 1, last_conflict_at=self.clock())
        )
        with self._begin() as connection:
            connection.execute(statement)

    def requeue(self, record: OperationRecord, *, items: Items | None = None) -> OperationRecord | None:
        """Make an ended operation queued again with a fresh attempt budget (``dlq replay``), its batch
        items as given, and no longer discarded; ``None`` if the row changed since it was read. Its
        history stays: the attempts that made it a dead letter come before the replay's."""
        values: dict[str, Any] = {
            "status": OperationStatus.QUEUED.value,
            "attempts": 0,
            "replays": record.replays + 1,
            "version": record.version + 1,
            "updated_at": self.clock(),
            "finished_at": None,
            "next_attempt_at": None,
            "error": None,
            "discarded_at": None,
            "discarded_by": None,
            "discard_reason": None,
        }
        if items is not None:
            values["items"] = dump_items(items)
        return self._compare_and_set(record, values)

    def restore(self, before: OperationRecord, current: OperationRecord) -> bool:
        """Put back ``before`` over ``current`` (undo a replay whose message could not be sent); False if
        the row changed since ``current`` was read."""
        values = {k: v for k, v in row_values(before).items() if k not in _KEPT_BY_RESTORE}
        values["version"] = current.version + 1
        return self._compare_and_set(current, values) is not None

    def discard(
        self, record: OperationRecord, *, actor: str, reason: str
    ) -> tuple[OperationRecord, ActionRecord] | None:
        """Settle the dead letter ``record`` (``dlq discard``): it leaves ``dlq list`` and filtered replays;
        its row, status and key stay. The action is recorded with it, in one transaction. ``None`` if the
        row changed since it was read."""
        now = self.clock()
        values = {
            "version": record.version + 1,
            "updated_at": now,
            "discarded_at": now,
            "discarded_by": actor,
            "discard_reason": reason,
        }
        params = {f"set_{name}": value for name, value in values.items()}
        params |= {"match_id": record.id, "match_version": record.version}
        details = {
            "provider": record.provider,
            "operation": record.operation,
            "idempotency_key": record.idempotency_key,
            "status": record.status.value,
            "error_type": (record.error or {}).get("type"),
        }
        with self._transaction() as connection:
            if connection.execute(update_statement(tuple(sorted(values))), params).rowcount != 1:
                return None  # nothing was written
            action = self._insert_action(
                connection,
                now,
                AuditAction.DLQ_DISCARD,
                actor=actor,
                target=record.id,
                reason=reason,
                details=details,
            )
        return record_of(row_values(record) | values), action

    # -- the operators' actions ------------------------------------------------------------------------

    def record_action(
        self,
        action: AuditAction,
        *,
        actor: str,
        target: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> ActionRecord:
        """Record what an operator did, on what, why, and what changed."""
        with self._begin() as connection:
            return self._insert_action(
                connection,
                self.clock(),
                action,
                actor=actor,
                target=target,
                reason=reason,
                details=details or {},
            )

    def actions(
        self, *, since: datetime | None = None, action: str | None = None, limit: int = 100
    ) -> list[ActionRecord]:
        """The operators' recorded actions, newest first."""
        query = select(actions)
        if since is not None:
            query = query.where(actions.c.at >= since)
        if action is not None:
            query = query.where(actions.c.action == action)
        query = query.order_by(actions.c.at.desc(), actions.c.id.desc()).limit(limit)
        with self._begin() as connection:
            return [
                ActionRecord(**(dict(row) | {"details": row["details"] or {}}))
                for row in connection.execute(query).mappings()
            ]

    @staticmethod
    def _insert_action(
        connection: Connection,
        at: datetime,
        action: AuditAction,
        *,
        actor: str,
        target: str,
        reason: str | None,
        details: dict[str, Any],
    ) -> ActionRecord:
        values = {
            "at": at,
            "actor": actor,
            "action": action.value,
            "target": target,
            "reason": reason,
            "details": storable(details),
        }
        inserted = connection.execute(insert(actions).values(values).returning(actions.c.id)).scalar_one()
        return ActionRecord(id=int(inserted), **values)

    def prune(self, *, retention: timedelta, dead_letter_retention: timedelta, batch: int = 1000) -> int:
        """Delete ended operations past their retention, at most ``batch`` rows per statement, each
        statement its own transaction: a writer waits for one batch at most, never for the whole prune.
        Returns how many rows went."""
        if batch < 1:
            raise ValueError(f"prune: the batch size must be at least 1, got {batch}")
        now = self.clock()
        cutoffs = [(OperationStatus.SUCCEEDED, now - retention)]
        cutoffs += [(status, now - dead_letter_retention) for status in ENDED_BADLY]
        deleted = 0
        postgresql = self.engine.dialect.name == "postgresql"
        with self._begin() as connection:
            for status, cutoff in cutoffs:
                # Oldest first, along the (status, finished_at) index: a scan that starts where the last
                # batch ended, not past the rows (or, on PostgreSQL, the dead tuples) before it. On
                # PostgreSQL the rows are locked as they are chosen, which checks them again as they are
                # now (one replayed since the statement began stays), skipping any a writer holds.
                doomed = (
                    select(table.c.id)
                    .where(table.c.status == status.value, table.c.finished_at < cutoff)
                    .order_by(table.c.finished_at)
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                )
                if postgresql:
                    # A CTE, materialized, is evaluated once. As the DELETE's subquery, a plan may evaluate
                    # it again for later rows, and each time it skips the rows the statement has deleted
                    # already: more than a batch goes. (SQLite reads a subquery once, and counts the rows
                    # of a DELETE only when the statement begins with DELETE.)
                    once = doomed.cte("doomed").prefix_with("MATERIALIZED", dialect="postgresql")
                    doomed = select(once.c.id)
                statement = delete(table).where(table.c.id.in_(doomed))
                while True:
                    count = connection.execute(statement).rowcount
                    deleted += count
                    if count < batch:
                        break
        return deleted

    def _compare_and_set(self, record: OperationRecord, values: dict[str, Any]) -> OperationRecord | None:
        columns = tuple(sorted(values))
        params = {f"set_{name}": value for name, value in values.items()} | {
            "match_id": record.id,
            "match_version": record.version,
        }
        with self._begin() as connection:
            if self._prepared(update_statement(columns)).rowcount(connection, params) != 1:
                return None
        return record_of(row_values(record) | values)
