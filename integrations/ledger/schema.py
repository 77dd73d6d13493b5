"""Alembic, driven from code: ``integrations db upgrade`` and the checks a worker makes at start.

Upgrades are safe to start together (one per container of a rollout): each one migrates holding a lock
on the database itself, taken before Alembic reads the current revision, so a second upgrader waits and
then finds the schema at head. PostgreSQL: a session-level advisory lock. SQLite: the write lock, held
by one transaction begun IMMEDIATE around the whole upgrade.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event, func, select

from integrations.ledger.engine import create_ledger_engine, database_url

SCHEMA_LOCK = "integrations.schema"
# PostgreSQL advisory locks take a bigint key: the first 8 bytes of the name's SHA-256, fixed forever.
SCHEMA_LOCK_KEY = int.from_bytes(hashlib.sha256(SCHEMA_LOCK.encode()).digest()[:8], "big", signed=True)
# How long a SQLite upgrader waits for another's migration (the ledger's own 30 s is for short writes).
SQLITE_UPGRADE_WAIT_MS = 10 * 60 * 1000


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "integrations.ledger:migrations")
    config.attributes["url"] = database_url(url)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the ledger at ``url`` to ``revision``; concurrent calls run one after another."""
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migration_engine(url: str) -> Engine:
    """The ledger's engine, except that on SQLite a transaction begins IMMEDIATE, taking the write lock."""
    engine = create_ledger_engine(url)
    if engine.dialect.name != "sqlite":
        return engine

    # Python's sqlite3 (legacy transaction control, the default before 3.16) sends BEGIN only before
    # INSERT/UPDATE/DELETE, so reads and DDL would run outside any transaction: the driver is told to send
    # no BEGIN of its own, and SQLAlchemy's begin sends BEGIN IMMEDIATE instead (SQLAlchemy's SQLite docs,
    # "Enabling Non-Legacy SQLite Transactional Modes"). A plain deferred BEGIN would let two upgraders
    # both read the old revision and the second fail at its first write.
    @event.listens_for(engine, "connect")
    def _transactions_begun_by_sqlalchemy(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_UPGRADE_WAIT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def upgrade_lock(connection: Connection) -> Iterator[None]:
    """Hold the database's schema lock on ``connection``, which must come from ``migration_engine``.

    Alembic takes no lock of its own: two upgrades of a fresh PostgreSQL both create the same tables and
    one fails (``UniqueViolation`` on ``pg_type_typname_nsp_index``); on SQLite one fails with "table
    already exists". Under this lock, a second upgrader waits, then reads the revision the first left.
    """
    if connection.dialect.name == "postgresql":
        # Session-level, not pg_advisory_xact_lock: it also covers migrations that commit on their own
        # (Alembic's autocommit_block, e.g. for CREATE INDEX CONCURRENTLY). If the body raises, the lock
        # lasts until the connection closes, which the caller does when it disposes of the engine.
        connection.execute(select(func.pg_advisory_lock(SCHEMA_LOCK_KEY)))
        # End the transaction the wait ran in, so Alembic's reads come after the other upgrader's commit.
        connection.commit()
        yield
        connection.execute(select(func.pg_advisory_unlock(SCHEMA_LOCK_KEY)))
        connection.commit()
        return
    # SQLite: the whole upgrade is one transaction (SQLite's DDL is transactional), begun IMMEDIATE by
    # migration_engine, so it holds the write lock from before Alembic's first read to the last commit.
    with connection.begin():
        yield
