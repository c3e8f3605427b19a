"""Statements of the ingest hot path, compiled once and run straight on the DBAPI cursor.

A Core statement executed through SQLAlchemy costs ~50-80 us of Python per call (cache key,
execution context, result wrapping); a C-STORE from a sequential sender pays four of them. Here
the statement is compiled once per dialect and set of columns, its bind processors (UTC
timestamps, SQLite's date/time text) applied by hand, and the driver's cursor does the rest:
~10 us. Only for plain INSERT/SELECT/UPDATE statements whose values need no SQLAlchemy-side
defaults (every value is passed).

Per call, what can be worked out once per (dialect, columns) is: the parameter order (one C
``itemgetter`` builds the driver's tuple), which values need a processor, and the values fixed in
the statement itself (processed once, at compile). A processor's last answer is kept: the values
that need one are the transaction's timestamp, the same object in every row of a batch.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

#: Values whose processed form may be kept: immutable, so the same object always means the same value.
_KEEPABLE = frozenset({dt.datetime, dt.date, dt.time, str, int, float, bool})


class _Processor:
    """A bind processor with its last argument and answer, for an immutable argument (processors are
    pure functions; the kept argument is referenced, so its identity is not reused meanwhile)."""

    __slots__ = ("_call", "_last_in", "_last_out")

    def __init__(self, call: Callable[[Any], Any]) -> None:
        self._call = call
        self._last_in: Any = _Processor  # nothing seen yet
        self._last_out: Any = None

    def __call__(self, value: Any) -> Any:
        if value is self._last_in:
            return self._last_out
        out = self._call(value)
        if type(value) in _KEEPABLE:
            self._last_in, self._last_out = value, out
        return out


class _Entry:
    """One compiled form: SQL text, how to build the driver's parameters from a call's mapping."""

    __slots__ = ("sql", "args", "processors", "fixed")

    def __init__(
        self,
        sql: str,
        args: Callable[[Mapping[str, Any]], Any] | None,
        processors: tuple[tuple[str, _Processor], ...],
        fixed: dict[str, Any],
    ) -> None:
        self.sql = sql
        self.args = args  # mapping -> positional tuple; None: the driver takes the mapping (named style)
        self.processors = processors
        self.fixed = fixed  # already processed


def _positional(order: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if not order:
        return lambda _values: ()
    if len(order) == 1:
        (only,) = order
        return lambda values: (values[only],)
    return cast(Callable[[Mapping[str, Any]], tuple[Any, ...]], operator.itemgetter(*order))


class Prepared:
    """``statement`` compiled per (dialect, columns); :meth:`execute` returns the DBAPI cursor."""

    def __init__(self, statement: ClauseElement) -> None:
        self._statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Entry] = {}

    def _compile(self, conn: Connection, keys: tuple[str, ...]) -> _Entry:
        dialect = conn.dialect
        compiled = cast(SQLCompiler, self._statement.compile(dialect=dialect, column_keys=list(keys)))
        raw = cast(dict[str, Callable[[Any], Any]], dict(compiled._bind_processors))
        processors = tuple((name, _Processor(call)) for name, call in raw.items() if name in keys)
        # values fixed in the statement itself (e.g. ``WHERE id = 1``): bound and processed once, here
        fixed = {}
        for name, bind in compiled.binds.items():
            if name not in keys:
                value = bind.effective_value
                fixed[name] = raw[name](value) if name in raw else value
        args = _positional(tuple(compiled.positiontup or ())) if compiled.positional else None
        entry = _Entry(str(compiled), args, processors, fixed)
        self._compiled[(dialect.name, keys)] = entry
        return entry

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        entry = self._compiled.get((conn.dialect.name, tuple(params)))
        if entry is None:
            entry = self._compile(conn, tuple(params))
        if entry.processors or entry.fixed:
            values = dict(params)
            for name, process in entry.processors:
                values[name] = process(values[name])
            values.update(entry.fixed)
        else:
            values = params  # type: ignore[assignment]
        driver = conn.connection.driver_connection
        assert driver is not None
        cursor = driver.cursor()
        cursor.execute(entry.sql, entry.args(values) if entry.args is not None else values)
        return cursor

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self.execute(conn, row).close()


__all__ = ["Prepared"]
