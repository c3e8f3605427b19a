"""SQL of the anonymization mapping (the ``anonymization_mappings`` table), on a Connection the caller owns.

Writes run in the archive's writer transaction; a row already there (same kind, original and
pseudonym: the same patient anonymized again) is skipped, so concurrent runs on several nodes agree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from minipacs.index.schema import AnonymizationMapping

_MAP: Final = cast(Table, AnonymizationMapping.__table__)
_KEY: Final = ["kind", "original", "pseudonym"]
_INSERT_IGNORING: Final[Mapping[str, Callable[[list[dict[str, Any]]], Any]]] = {
    "sqlite": lambda v: sqlite.insert(_MAP).values(v).on_conflict_do_nothing(index_elements=_KEY),
    "postgresql": lambda v: postgresql.insert(_MAP).values(v).on_conflict_do_nothing(index_elements=_KEY),
}
#: Longest original kept (the column's size; PS3.5 values are shorter).
MAX_ORIGINAL: Final = 400
#: Rows per INSERT statement (bound parameters stay well under SQLite's limit).
_BATCH: Final = 200


def insert_mappings(conn: Connection, rows: Iterable[tuple[str, str, str]], now: dt.datetime) -> int:
    """Store (kind, original, pseudonym) rows not stored yet; returns how many were new."""
    unique = sorted({(k, o[:MAX_ORIGINAL], p) for k, o, p in rows})
    values = [{"kind": k, "original": o, "pseudonym": p, "created_at": now} for k, o, p in unique]
    added = 0
    for start in range(0, len(values), _BATCH):
        result = conn.execute(_INSERT_IGNORING[conn.dialect.name](values[start : start + _BATCH]))
        added += max(result.rowcount, 0)
    return added


def list_mappings(
    conn: Connection, *, kind: str = "", value: str = "", limit: int = 100, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Rows (newest first) of ``kind`` whose original or pseudonym is ``value`` (exactly), and their count."""
    where = []
    if kind:
        where.append(_MAP.c.kind == kind)
    if value:
        where.append(or_(_MAP.c.original == value, _MAP.c.pseudonym == value))
    total = conn.execute(select(func.count()).select_from(_MAP).where(*where)).scalar_one()
    rows = conn.execute(select(_MAP).where(*where).order_by(_MAP.c.id.desc()).limit(limit).offset(offset)).mappings()
    return [dict(row) for row in rows], int(total)


__all__ = ["insert_mappings", "list_mappings"]
