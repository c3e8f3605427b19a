"""Statements of the ingest hot path, compiled once and run straight on the DBAPI cursor.

A Core statement executed through SQLAlchemy costs ~50-80 us of Python per call (cache key,
execution context, result wrapping); a C-STORE from a sequential sender pays four of them. Here
the statement is compiled once per dialect and set of columns, its bind processors (UTC
timestamps, SQLite's date/time text) applied by hand, and the driver's cursor does the rest:
~10 us. Only for plain INSERT/SELECT/UPDATE statements whose values need no SQLAlchemy-side
defaults (every value is passed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_Entry = tuple[str, tuple[str, ...] | None, dict[str, Callable[[Any], Any]], dict[str, Any]]


class Prepared:
    """``statement`` compiled per (dialect, columns); :meth:`execute` returns the DBAPI cursor."""

    def __init__(self, statement: ClauseElement) -> None:
        self._statement = statement
        # (dialect name, column keys) -> (SQL, parameter order or None for named, processors, fixed values)
        self._compiled: dict[tuple[str, tuple[str, ...]], _Entry] = {}

    def _compile(self, conn: Connection, keys: tuple[str, ...]) -> _Entry:
        dialect = conn.dialect
        compiled = cast(SQLCompiler, self._statement.compile(dialect=dialect, column_keys=list(keys)))
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        processors = cast(dict[str, Callable[[Any], Any]], dict(compiled._bind_processors))
        # values fixed in the statement itself (e.g. ``WHERE id = 1``): bound once, here
        fixed = {name: bind.effective_value for name, bind in compiled.binds.items() if name not in keys}
        entry = (str(compiled), order, processors, fixed)
        self._compiled[(dialect.name, keys)] = entry
        return entry

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        keys = tuple(params)
        entry = self._compiled.get((conn.dialect.name, keys))
        sql, order, processors, fixed = entry if entry is not None else self._compile(conn, keys)
        values = {k: (processors[k](v) if k in processors else v) for k, v in params.items()}
        for name, value in fixed.items():
            values[name] = processors[name](value) if name in processors else value
        driver = conn.connection.driver_connection
        assert driver is not None
        cursor = driver.cursor()
        cursor.execute(sql, tuple(values[k] for k in order) if order is not None else values)
        return cursor

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self.execute(conn, row).close()


__all__ = ["Prepared"]
