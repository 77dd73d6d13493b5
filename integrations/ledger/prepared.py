"""The two statements of every attempt, compiled once and run on the database driver's own cursor.

SQLAlchemy builds them (the SQL of each dialect, and each column type's conversion of values both ways);
only the per-statement work of running them through a ``Connection`` is left out: an execution context, a
result object and its row mappings, which cost more than the statement itself on SQLite (0.46 against
0.34 ms for ``Ledger.take`` in one thread, and half of it on PostgreSQL). Every other statement of the
ledger goes through SQLAlchemy as usual.

Whoever listens to SQLAlchemy's statement events on the engine (an APM's instrumentation, a test that
counts) would not see a statement run this way, so while anyone listens the statement takes the usual way,
``Connection.execute``. A driver's error is raised as SQLAlchemy raises it (``sqlalchemy.exc.DBAPIError``
and its subclasses), and a connection the driver lost is invalidated, as SQLAlchemy does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Engine
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import UpdateBase

Processor = Callable[[Any], Any] | None


class Prepared:
    """``statement`` compiled for ``dialect``, with the conversions of its bound values and of the
    ``returning`` columns it gives back. ``column_keys``: an ``INSERT``'s columns, all bound by name."""

    def __init__(
        self,
        statement: UpdateBase,
        dialect: Dialect,
        *,
        column_keys: Sequence[str] | None = None,
        returning: Sequence[Column[Any]] = (),
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys or ()) or None)
        self.statement = statement
        self.sql = compiled.string
        self._dialect = dialect
        # Values the statement carries itself (literals SQLAlchemy binds, such as a status in a WHERE).
        self._fixed = {
            name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
        }
        converts = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items()
        }
        names = compiled.positiontup or list(compiled.binds)  # positional drivers take them in order
        self._binds = [(name, *_with_none(converts[name])) for name in names]
        self._positional = compiled.positional
        self._returning = [(column.name, column.type.dialect_impl(dialect)) for column in returning]
        # Known from the first row's description.
        self._results: list[tuple[str, Processor, Any]] | None = None

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """``values`` as the driver takes them: converted, in the statement's order or by name."""
        given = self._fixed | dict(values)
        converted = [
            none if value is None else convert(value) if convert else value
            for name, convert, none in self._binds
            for value in (given[name],)
        ]
        if self._positional:
            return converted
        return {name: value for (name, _, _), value in zip(self._binds, converted, strict=True)}

    def first(self, connection: Connection, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run the statement; the first row it returns (its ``returning`` columns), or ``None``."""
        if observed(connection.engine):
            found = connection.execute(self.statement, values).mappings().first()
            return dict(found) if found is not None else None
        description, _, row = self._run(connection, values, fetch=True)
        if row is None:
            return None
        if self._results is None:
            self._results = [
                (name, *_with_none(kind.result_processor(self._dialect, described[1])))
                for (name, kind), described in zip(self._returning, description, strict=True)
            ]
        return {
            name: none if value is None else convert(value) if convert else value
            for (name, convert, none), value in zip(self._results, row, strict=True)
        }

    def rowcount(self, connection: Connection, values: Mapping[str, Any]) -> int:
        """Run the statement; how many rows it changed."""
        if observed(connection.engine):
            return int(connection.execute(self.statement, values).rowcount)
        return self._run(connection, values, fetch=False)[1]

    def _run(self, connection: Connection, values: Mapping[str, Any], *, fetch: bool) -> tuple[Any, int, Any]:
        """The statement run: the cursor's description of the rows, the rows changed, the first row."""
        parameters = self.parameters(values)
        driver = connection.connection.driver_connection
        assert driver is not None  # a pooled connection in use is open
        dialect = self._dialect
        cursor = driver.cursor()
        try:
            cursor.execute(self.sql, parameters)
            row = cursor.fetchone() if fetch else None
            return cursor.description, int(cursor.rowcount), row
        except dialect.loaded_dbapi.Error as exc:
            lost = dialect.is_disconnect(exc, driver, cursor)
            if lost:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                self.sql,
                parameters,
                exc,
                dialect.loaded_dbapi.Error,
                hide_parameters=True,  # they hold payloads, which logs must never show
                connection_invalidated=lost,
                dialect=dialect,
            ) from exc
        finally:
            cursor.close()


def _with_none(convert: Processor) -> tuple[Processor, Any]:
    """A value conversion, and what it makes of ``None``, worked out once: most of an attempt's values are
    ``None`` (the columns a new row leaves empty), and a conversion's answer for it never changes (``None``,
    or ``'null'`` for a JSON column)."""
    return convert, convert(None) if convert is not None else None


def observed(engine: Engine) -> bool:
    """Whether anyone listens to ``engine``'s statement events, who would not see a statement run on the
    driver."""
    dispatch = engine.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)
