"""SQL of lossless compression (core/compression.py): candidates, the switch to a compressed copy
(whose replaced blob is queued in index/blob_removal_repo.py), and the disk saved (migration 0016)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from sqlalchemy import Connection, case, func, select, update

from minipacs.index import blob_removal_repo
from minipacs.index.schema import Instance, Series, Study

#: Values per IN list.
_IN_CHUNK: Final = 500


class Candidate(NamedTuple):
    pk: int
    sop_instance_uid: str
    blob_key: str
    size: int
    transfer_syntax_uid: str
    study_instance_uid: str
    series_instance_uid: str


def candidates(
    conn: Connection,
    *,
    study_uids: Sequence[str] = (),
    series_uids: Sequence[str] = (),
    received_before: dt.datetime | None = None,
    after_pk: int = 0,
    limit: int = 100,
) -> list[Candidate]:
    """Instances compression has not looked at yet (``compression`` = ""), by primary key after
    ``after_pk``; within ``study_uids`` and ``series_uids`` when given (at most 500 of each),
    received before ``received_before`` when given."""
    query = (
        select(
            Instance.id,
            Instance.sop_instance_uid,
            Instance.blob_key,
            Instance.size,
            Instance.transfer_syntax_uid,
            Study.study_instance_uid,
            Series.series_instance_uid,
        )
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Instance.compression == "", Instance.id > after_pk)
    )
    if study_uids:
        query = query.where(Study.study_instance_uid.in_(list(study_uids[:_IN_CHUNK])))
    if series_uids:
        query = query.where(Series.series_instance_uid.in_(list(series_uids[:_IN_CHUNK])))
    if received_before is not None:
        query = query.where(Instance.received_at < received_before)
    return [Candidate(*row) for row in conn.execute(query.order_by(Instance.id).limit(limit))]


def _current(conn: Connection, pk: int) -> Any:
    query = select(Instance.blob_key, Instance.size, Instance.original_size).where(Instance.id == pk)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).first()


def switch(
    conn: Connection,
    pk: int,
    old_key: str,
    *,
    new_key: str,
    new_size: int,
    transfer_syntax_uid: str,
    syntax_name: str,
    remove_after: dt.datetime,
) -> bool:
    """Make row ``pk`` name the compressed copy ``new_key``, if it still names ``old_key`` (else
    False: deleted, or replaced by a re-sent copy meanwhile, and nothing changes); the old
    blob is queued for removal after ``remove_after``."""
    row = _current(conn, pk)
    if row is None or row.blob_key != old_key:
        return False
    conn.execute(
        update(Instance)
        .where(Instance.id == pk)
        .values(
            blob_key=new_key,
            size=new_size,
            transfer_syntax_uid=transfer_syntax_uid,
            original_size=row.original_size if row.original_size is not None else row.size,
            compression=syntax_name,
        )
    )
    blob_removal_repo.queue(conn, [blob_removal_repo.Replaced(old_key, int(row.size), "compressed")], remove_after)
    return True


def note(conn: Connection, pk: int, old_key: str, text: str) -> bool:
    """Record ``text`` (why the instance was skipped) on row ``pk`` if it still names ``old_key``."""
    result = conn.execute(
        update(Instance).where(Instance.id == pk, Instance.blob_key == old_key).values(compression=text[:1000])
    )
    return bool(result.rowcount)


def savings(conn: Connection, study_uid: str | None = None) -> dict[str, int]:
    """What the stored instances (of one study, or all) take and took as they arrived:
    ``instances``, ``stored_bytes``, ``original_bytes``, ``compressed`` and ``skipped`` counts."""
    compressed = (Instance.original_size.is_not(None), 1)
    skipped = (Instance.compression.like("skipped:%"), 1)
    query = select(
        func.count(Instance.id),
        func.coalesce(func.sum(Instance.size), 0),
        func.coalesce(func.sum(func.coalesce(Instance.original_size, Instance.size)), 0),
        func.coalesce(func.sum(case(compressed, else_=0)), 0),
        func.coalesce(func.sum(case(skipped, else_=0)), 0),
    )
    if study_uid is not None:
        query = (
            query.select_from(Instance)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Study.study_instance_uid == study_uid)
        )
    count, stored, original, done, skips = conn.execute(query).one()
    return {
        "instances": int(count),
        "stored_bytes": int(stored),
        "original_bytes": int(original),
        "compressed": int(done),
        "skipped": int(skips),
    }


def skip_reasons(conn: Connection, study_uid: str, limit: int = 100) -> list[tuple[str, str]]:
    """(SOP Instance UID, why) of a study's instances compression skipped."""
    rows = conn.execute(
        select(Instance.sop_instance_uid, Instance.compression)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == study_uid, Instance.compression.like("skipped:%"))
        .order_by(Instance.id)
        .limit(limit)
    )
    return [(str(u), str(c)) for u, c in rows]


__all__ = [
    "Candidate",
    "candidates",
    "note",
    "savings",
    "skip_reasons",
    "switch",
]
