"""SQL of the PS3.18 JSON metadata kept per instance (core/metadata.py computes the texts)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple, cast

from sqlalchemy import Connection, Insert, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from minipacs.index.schema import Instance, InstanceMetadata, Series, Study

_TABLE: Final = cast(Table, InstanceMetadata.__table__)
#: Dialect -> an INSERT that replaces the kept text of an instance that has one (one statement, no
#: DELETE first: a DELETE ... IN locks the existing rows in the order its plan reads them, and a row
#: another writer inserts meanwhile made the following INSERT fail with a unique violation).
_UPSERT: Final[dict[str, Insert]] = {}
for _name, _dialect in (("sqlite", sqlite), ("postgresql", postgresql)):
    _insert = _dialect.insert(_TABLE)
    _UPSERT[_name] = _insert.on_conflict_do_update(
        index_elements=[_TABLE.c.sop_instance_uid],
        set_={"json": _insert.excluded.json, "created_at": _insert.excluded.created_at},
    )


class Location(NamedTuple):
    """Where a stored instance is, and the UIDs its BulkDataURIs need."""

    sop_instance_uid: str
    blob_key: str
    study_instance_uid: str
    series_instance_uid: str


def locations(conn: Connection, uids: Sequence[str]) -> list[Location]:
    """The stored instances among ``uids`` (at most a few hundred: one IN list)."""
    rows = conn.execute(
        select(Instance.sop_instance_uid, Instance.blob_key, Study.study_instance_uid, Series.series_instance_uid)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Instance.sop_instance_uid.in_(uids))
    )
    return [Location(*row) for row in rows]


def store(conn: Connection, rows: Sequence[tuple[str, str]], computed_from: Mapping[str, str] | None = None) -> None:
    """Keep (SOP Instance UID, JSON text) pairs, replacing what was kept for those instances.

    ``computed_from``: SOP Instance UID -> the blob key the text was computed from; a pair whose
    instance names another copy by now (compressed, replaced meanwhile) is dropped, not stored."""
    if computed_from is not None and rows:
        current = {
            uid: key
            for uid, key in conn.execute(
                select(Instance.sop_instance_uid, Instance.blob_key).where(
                    Instance.sop_instance_uid.in_([uid for uid, _ in rows])
                )
            )
        }
        rows = [(uid, text) for uid, text in rows if current.get(uid) == computed_from.get(uid)]
    if not rows:
        return
    # One order for every writer: two nodes (node B computing on demand what node A's worker stores
    # too) lock the rows in the same order, and a row the other inserted first is waited for and
    # updated, not a unique violation. Rows stored by two jobs of one group-committed transaction
    # can still meet another writer in another order: the writer retries a deadlock (core/archive.py).
    rows = sorted(dict(rows).items())
    now = dt.datetime.now(dt.UTC)
    conn.execute(
        _UPSERT[conn.dialect.name], [{"sop_instance_uid": uid, "json": text, "created_at": now} for uid, text in rows]
    )


def texts(conn: Connection, uids: Sequence[str]) -> dict[str, str]:
    """SOP Instance UID -> kept JSON text, for those of ``uids`` that have one (one IN list)."""
    rows = conn.execute(select(_TABLE.c.sop_instance_uid, _TABLE.c.json).where(_TABLE.c.sop_instance_uid.in_(uids)))
    return {row[0]: row[1] for row in rows}


def forget(conn: Connection, uids: Sequence[str]) -> None:
    """Forget the metadata of deleted instances (in the delete transaction)."""
    if uids:
        conn.execute(delete(_TABLE).where(_TABLE.c.sop_instance_uid.in_(uids)))


__all__ = ["Location", "forget", "locations", "store", "texts"]
