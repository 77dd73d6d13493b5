"""Migration 0009: the indexes of conflicts and of references hold only the rows that have one, and the
queries that read them still do (a partial index serves a query only if its WHERE implies the index's);
the index of (provider, status) is gone."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine

from integrations.ledger import schema
from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.rows import table

PARTIAL = {
    "ix_operations_last_conflict_at": "last_conflict_at IS NOT NULL",
    "ix_operations_provider_reference": "reference IS NOT NULL",
}


DROPPED = "ix_operations_provider_status"


def names(engine: Engine) -> set[str]:
    return {str(index["name"]) for index in inspect(engine).get_indexes("operations")}


def predicates(engine: Engine) -> dict[str, str | None]:
    """The WHERE of each of the two indexes, as the database reports it (``None``: every row)."""
    found: dict[str, str | None] = {}
    for index in inspect(engine).get_indexes("operations"):
        if index["name"] in PARTIAL:
            options = index.get("dialect_options", {})
            where = options.get("postgresql_where", options.get("sqlite_where"))
            found[str(index["name"])] = None if where is None else str(where).strip("()")
    return found


def plan(engine: Engine, statement: str) -> str:
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as connection:
        # Scans made unattractive on PostgreSQL's empty table, so the plan shows which index can serve.
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET enable_seqscan = off")
        return "\n".join(str(row[-1]) for row in connection.exec_driver_sql(explain + statement))


def test_the_indexes_of_conflicts_and_references_hold_only_rows_that_have_one(ledger_url: str) -> None:
    engine = create_ledger_engine(ledger_url)
    try:
        assert predicates(engine) == PARTIAL and DROPPED not in names(engine)
        conflicts = (
            select(table.c.id)
            .where(table.c.last_conflict_at.is_not(None), table.c.conflicts > 0)
            .order_by(table.c.last_conflict_at.desc())
        )
        by_reference = select(table.c.id).where(table.c.provider == "stripe", table.c.reference == "pi_1")
        for statement, index in (
            (conflicts, "ix_operations_last_conflict_at"),
            (by_reference, "ix_operations_provider_reference"),
        ):
            sql = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            assert index in plan(engine, sql)
    finally:
        engine.dispose()


def test_the_downgrade_puts_the_indexes_back_as_they_were(ledger_url: str) -> None:
    config = schema.alembic_config(ledger_url)
    engine = create_ledger_engine(ledger_url)
    try:
        try:
            command.downgrade(config, "0008")
            assert predicates(engine) == dict.fromkeys(PARTIAL) and DROPPED in names(engine)
        finally:
            schema.upgrade(ledger_url)
        assert predicates(engine) == PARTIAL and DROPPED not in names(engine)
    finally:
        engine.dispose()
