"""SQL of the ``rejected_instances`` table (core/rejection.py), on a Connection the caller owns."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from minipacs.index.schema import RejectedInstance

_TABLE: Final = cast(Table, RejectedInstance.__table__)
_INSERT_IGNORING: Final[Mapping[str, Callable[[list[dict[str, Any]]], Any]]] = {
    "sqlite": lambda v: sqlite.insert(_TABLE).values(v).on_conflict_do_nothing(index_elements=["sop_instance_uid"]),
    "postgresql": lambda v: (
        postgresql.insert(_TABLE).values(v).on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    ),
}
#: Rows per INSERT statement (bound parameters stay well under SQLite's limit).
_BATCH: Final = 100
_CODE_OF: Final = select(_TABLE.c.code).where(_TABLE.c.sop_instance_uid == bindparam("uid"))


def record(
    conn: Connection, references: Sequence[tuple[str, str, str]], code: str, note_uid: str, actor: str, now: dt.datetime
) -> int:
    """Record (study, series, SOP Instance UID) as rejected by the note; an instance rejected before
    keeps its first record. Returns how many were new."""
    values = [
        {
            "sop_instance_uid": sop,
            "study_instance_uid": study,
            "series_instance_uid": series,
            "code": code,
            "note_uid": note_uid,
            "actor": actor,
            "rejected_at": now,
        }
        for study, series, sop in references
    ]
    added = 0
    for start in range(0, len(values), _BATCH):
        result = conn.execute(_INSERT_IGNORING[conn.dialect.name](values[start : start + _BATCH]))
        added += max(result.rowcount, 0)
    return added


def code_of(conn: Connection, sop_instance_uid: str) -> str | None:
    """The rejection code of an instance a note rejected, or None."""
    return cast(str | None, conn.execute(_CODE_OF, {"uid": sop_instance_uid}).scalar())


def any_rejected(conn: Connection) -> bool:
    return conn.execute(select(_TABLE.c.sop_instance_uid).limit(1)).first() is not None


def listed(conn: Connection, *, study: str = "", limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Rejected instances, newest first (of ``study`` when given), and how many there are."""
    where = [_TABLE.c.study_instance_uid == study] if study else []
    rows = conn.execute(
        select(_TABLE)
        .where(*where)
        .order_by(_TABLE.c.rejected_at.desc(), _TABLE.c.sop_instance_uid)
        .limit(limit)
        .offset(offset)
    ).mappings()
    total = conn.execute(select(func.count()).select_from(_TABLE).where(*where)).scalar_one()
    return [dict(row) for row in rows], int(total)


__all__ = ["any_rejected", "code_of", "listed", "record"]
