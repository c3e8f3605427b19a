"""SQL of the changes journal (core/changes.py gives the rows their meaning).

Rows are appended in the writer's transaction, on its connection; ``seq`` only grows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, delete, func, insert, select, update

from minipacs.index.database import NODE_INFO
from minipacs.index.dialects import insert_of
from minipacs.index.fastsql import Prepared
from minipacs.index.schema import Change, WatchCursor

_CHANGES: Final = cast(Table, Change.__table__)
_WATCH: Final = cast(Table, WatchCursor.__table__)
_INSERT: Final = insert(_CHANGES)
_FAST_INSERT: Final = Prepared(_INSERT)

#: One journal row as :func:`changes_after` reads it (seq, type, level, uid, study, time, reason, node).
ChangeRow = tuple[int, str, str, str, str, dt.datetime, str, str]


def insert_changes(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append ``rows`` (change_type, level, uid, study_instance_uid, created_at[, reason]) in order, each
    with the node whose writer connection runs the transaction (index/database.py ``NODE_INFO``)."""
    node = conn.info.get(NODE_INFO, "")
    rows = [{**row, "node": node} for row in rows]
    if len(rows) <= 4:  # a few rows (one C-STORE's): straight to the driver
        _FAST_INSERT.execute_many(conn, rows)
    else:
        conn.execute(_INSERT, list(rows))


def prune_changes(conn: Connection, before: dt.datetime, below: int | None, batch: int) -> int:
    """Delete at most ``batch`` of the oldest rows made before ``before`` and whose ``seq`` is below
    ``below`` (None: no such bound), never the newest row (SQLite would hand its ``seq`` out again
    once the table is empty); how many."""
    newest = select(func.max(_CHANGES.c.seq)).scalar_subquery()
    chosen = select(_CHANGES.c.seq).where(_CHANGES.c.created_at < before, _CHANGES.c.seq < newest)
    if below is not None:
        chosen = chosen.where(_CHANGES.c.seq < below)
    chosen = chosen.order_by(_CHANGES.c.seq).limit(batch)
    return int(conn.execute(delete(_CHANGES).where(_CHANGES.c.seq.in_(chosen))).rowcount or 0)


def first_seq(conn: Connection) -> int:
    """The lowest ``seq`` in the journal, 0 when it is empty."""
    return int(conn.execute(select(func.coalesce(func.min(_CHANGES.c.seq), 0))).scalar_one())


def last_seq(conn: Connection) -> int:
    """The highest ``seq`` in the journal, 0 when it is empty."""
    return int(conn.execute(select(func.coalesce(func.max(_CHANGES.c.seq), 0))).scalar_one())


def changes_after(conn: Connection, since: int, limit: int) -> list[ChangeRow]:
    """(seq, change type, level, uid, study, time, reason, node) of at most ``limit`` rows after ``since``,
    in ``seq`` order."""
    t = _CHANGES
    rows = conn.execute(
        select(
            t.c.seq, t.c.change_type, t.c.level, t.c.uid, t.c.study_instance_uid, t.c.created_at, t.c.reason, t.c.node
        )
        .where(t.c.seq > since)
        .order_by(t.c.seq)
        .limit(limit)
    ).all()
    return [
        (int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), r[5], str(r[6] or ""), str(r[7] or "")) for r in rows
    ]


__all__ = [
    "first_seq",
    "prune_changes",
    "ChangeRow",
    "changes_after",
    "insert_changes",
    "last_seq",
    "claim_watch_range",
    "watch_cursor",
]


def watch_cursor(conn: Connection, name: str) -> int | None:
    """The journal ``seq`` up to which the watcher ``name`` has looked; None: it never ran here."""
    value = conn.execute(select(_WATCH.c.seq).where(_WATCH.c.name == name)).scalar()
    return None if value is None else int(value)


def claim_watch_range(conn: Connection, name: str, read: int | None, new: int, now: dt.datetime) -> bool:
    """Move the watcher's cursor from ``read`` (what this caller read; None: no row yet) to ``new``; False
    when another node moved it first (its rows are that node's) or made the row meanwhile."""
    if read is None:
        statement = insert_of(conn)(_WATCH).values(name=name, seq=new, updated_at=now).on_conflict_do_nothing()
        # RETURNING, not rowcount: the PostgreSQL driver here reports -1 for an INSERT ... ON CONFLICT
        return conn.execute(statement.returning(_WATCH.c.name)).first() is not None
    moved = update(_WATCH).where(_WATCH.c.name == name, _WATCH.c.seq == read).values(seq=new, updated_at=now)
    return conn.execute(moved.returning(_WATCH.c.name)).first() is not None
