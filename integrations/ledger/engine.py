"""The ledger's database engine: SQLite for a single machine, PostgreSQL (psycopg 3) in production."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Self

from sqlalchemy import Column, Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.sql.dml import UpdateBase

from integrations.errors import LedgerUnavailable
from integrations.ledger.prepared import Prepared

Clock = Callable[[], datetime]

# How long the main thread keeps a connection it does not use (``Database._begin``).
KEEP_IDLE = 30.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def database_url(url: str) -> str:
    """Accept the usual ``postgresql://`` and ``postgres://`` URLs and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_ledger_engine(url: str, *, autocommit: bool = False) -> Engine:
    """The engine of the ledger at ``url``. ``autocommit``: its connections commit every statement by
    themselves, and are put back in the pool as they are (nothing to roll back); a transaction sets the
    database's own isolation level for itself (``Database._transaction``)."""
    url = database_url(url)
    # A statement's error names no bound value: they hold payloads and answers, which logs must never show.
    options: dict[str, Any] = {"hide_parameters": True}
    if autocommit:
        options |= {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30}, **options)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets worker processes read while one writes; busy_timeout waits for the writer.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # No pre-ping (a round trip per checkout): a dropped connection fails one statement, which the
    # pipeline treats as a ledger outage and retries; SQLAlchemy replaces the connection meanwhile.
    return create_engine(url, pool_recycle=1800, **options)


class Database:
    """The ledger's database as the stores on it use it (the operations' ``Ledger``, the webhooks'
    ``EventStore``): statements that commit by themselves, transactions for writes that go together, and
    an unreachable database (or one without the schema) raised as ``LedgerUnavailable``."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow, autocommit: Engine | None = None) -> None:
        """``engine``: the ledger's database as given, whose transactions an application's own sessions
        may use. ``autocommit``: an engine on the same database whose connections commit every statement
        by themselves (``create_ledger_engine(autocommit=True)``), for the ledger's own statements;
        without it, ``engine``'s connections are switched for each statement, which costs the switch both
        ways on every one."""
        self.engine = engine
        # Every write is one statement, so each commits by itself: no BEGIN/COMMIT round trips.
        self._autocommit = autocommit or engine.execution_options(isolation_level="AUTOCOMMIT")
        self.clock = clock
        # The main thread's connection, kept from one statement to the next (``_begin``).
        self._kept: Connection | None = None
        self._kept_pid = 0
        self._kept_since = 0.0  # when it was last used (time.monotonic)
        self._depth = 0  # how many ``_begin`` blocks hold it now
        self._statements: dict[UpdateBase, Prepared] = {}  # ``_prepared``

    @classmethod
    def connect(cls, url: str, *, clock: Clock = utcnow) -> Self:
        """The database at ``url``; its pool of the ledger's own statements connects at their first."""
        autocommit = create_ledger_engine(url, autocommit=True)
        return cls(create_ledger_engine(url), clock=clock, autocommit=autocommit)

    @classmethod
    def sharing(cls, other: Database) -> Self:
        """Another store on ``other``'s database, sharing its engines and clock."""
        return cls(other.engine, clock=other.clock, autocommit=other._autocommit)

    def dispose(self) -> None:
        """Close the pooled connections."""
        self._give_back()
        self.engine.dispose()
        self._autocommit.dispose()

    @property
    def where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A connection whose every statement commits by itself.

        The main thread keeps its connection from one statement to the next: a worker's pool process runs
        its tasks there, and would otherwise take a connection from the pool and give it back for each of
        an attempt's statements. It is given back after ``KEEP_IDLE`` seconds unused (the pool's recycling
        then applies to it) and after an error. Other threads (a threads or gevent pool, a web server's)
        take one per statement, so the pool still bounds how many there are."""
        if threading.current_thread() is not threading.main_thread():
            with self._reached(), self._autocommit.connect() as connection:
                yield connection
            return
        with self._reached():
            connection = self._kept_connection()
            self._depth += 1
            try:
                yield connection
            except BaseException:
                if self._depth == 1:  # not under a block that still reads from it
                    self._give_back()
                raise
            finally:
                self._depth -= 1
                self._kept_since = time.monotonic()

    def _kept_connection(self) -> Connection:
        if self._kept is not None and self._kept_pid != os.getpid():
            self._kept = None  # the parent process's, before a fork: forgotten, never closed from here
        if self._kept is not None and self._depth == 0 and time.monotonic() - self._kept_since > KEEP_IDLE:
            self._give_back()
        if self._kept is None:
            self._kept = self._autocommit.connect()
            self._kept_pid = os.getpid()
        return self._kept

    def _give_back(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None and self._kept_pid == os.getpid():
            kept.close()

    def _prepared(
        self,
        statement: UpdateBase,
        *,
        column_keys: Sequence[str] | None = None,
        returning: Sequence[Column[Any]] = (),
    ) -> Prepared:
        """``statement`` (one built once) prepared for this database at its first use, inside a ``_begin``
        block: once a connection was made, SQLAlchemy knows what the server supports (``RETURNING`` on
        SQLite). The options are ``Prepared``'s."""
        prepared = self._statements.get(statement)
        if prepared is None:
            prepared = self._statements[statement] = Prepared(
                statement, self._autocommit.dialect, column_keys=column_keys, returning=returning
            )
        return prepared

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A connection in one transaction, committed at the end: for writes that go together."""
        with self._reached(), self._autocommit.connect() as connection:
            # The database's own level (known once a connection was made), over the connection's autocommit.
            connection.execution_options(isolation_level=self._autocommit.dialect.default_isolation_level)
            with connection.begin():
                yield connection

    @contextmanager
    def _reached(self) -> Iterator[None]:
        try:
            yield
        except (OperationalError, InterfaceError, ProgrammingError, DisconnectionError, PoolTimeout) as exc:
            # The database cannot be reached or lacks the schema: worth waiting for. Other errors (bad
            # data) are not, and go up to the caller (the pipeline ends the operation after a few tries).
            raise LedgerUnavailable(
                f"ledger at {self.where}: {type(exc).__name__}: {str(exc).splitlines()[0]} "
                "(is the database up, and has `integrations db upgrade` been run?)"
            ) from exc
