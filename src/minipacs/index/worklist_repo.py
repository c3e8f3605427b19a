"""SQL of the worklist, MPPS and study-completion tables, on a Connection the caller owns.

Rows go in and out as plain mappings keyed by column name; ``core/worklist.py``
and ``core/mpps.py`` give them meaning. Writes run in the archive's writer transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from sqlalchemy import Connection, Table, delete, insert, select, update

from minipacs.index.schema import Instance, PerformedProcedureStep, StudyCompletion, WorklistItem

_WL: Final = cast(Table, WorklistItem.__table__)
_MPPS: Final = cast(Table, PerformedProcedureStep.__table__)
_DONE: Final = cast(Table, StudyCompletion.__table__)
_INS: Final = cast(Table, Instance.__table__)

#: Worklist columns matched in SQL before the full K.6 matching of each candidate: keyword -> column.
WORKLIST_PREFILTER: Final[Mapping[str, str]] = {
    "AccessionNumber": "accession_number",
    "PatientID": "patient_id",
    "StudyInstanceUID": "study_instance_uid",
}


# ------------------------------------------------------------------ worklist


def insert_worklist(conn: Connection, values: Mapping[str, Any]) -> int:
    now = dt.datetime.now(dt.UTC)
    pk = conn.execute(insert(_WL).values(**values, created_at=now, updated_at=now)).inserted_primary_key
    return int(pk[0]) if pk else 0


def worklist_rows(
    conn: Connection, equal: Mapping[str, str] | None = None, statuses: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Entries in id order; ``equal``: column -> exact value; ``statuses``: only these."""
    query = select(_WL).order_by(_WL.c.id)
    for column, value in (equal or {}).items():
        query = query.where(_WL.c[column] == value)
    if statuses is not None:
        query = query.where(_WL.c.status.in_(list(statuses)))
    return [dict(row) for row in conn.execute(query).mappings()]


def worklist_row(conn: Connection, pk: int) -> dict[str, Any] | None:
    row = conn.execute(select(_WL).where(_WL.c.id == pk)).mappings().first()
    return dict(row) if row else None


def delete_worklist(conn: Connection, pks: Sequence[int]) -> int:
    return int(conn.execute(delete(_WL).where(_WL.c.id.in_(list(pks)))).rowcount)


def update_worklist(conn: Connection, pk: int, values: Mapping[str, Any]) -> int:
    """Replace the columns of entry ``pk`` (its dataset with them), keeping its id; rows changed."""
    return int(
        conn.execute(update(_WL).where(_WL.c.id == pk).values(**values, updated_at=dt.datetime.now(dt.UTC))).rowcount
    )


def set_worklist_status(conn: Connection, pk: int, status: str) -> None:
    conn.execute(update(_WL).where(_WL.c.id == pk).values(status=status, updated_at=dt.datetime.now(dt.UTC)))


# ------------------------------------------------------------------ MPPS


def mpps_row(conn: Connection, sop_instance_uid: str) -> dict[str, Any] | None:
    row = conn.execute(select(_MPPS).where(_MPPS.c.sop_instance_uid == sop_instance_uid)).mappings().first()
    return dict(row) if row else None


def insert_mpps(conn: Connection, values: Mapping[str, Any]) -> int:
    now = dt.datetime.now(dt.UTC)
    pk = conn.execute(insert(_MPPS).values(**values, created_at=now, updated_at=now)).inserted_primary_key
    return int(pk[0]) if pk else 0


def update_mpps(
    conn: Connection, sop_instance_uid: str, values: Mapping[str, Any], *, was: Mapping[str, Any] | None = None
) -> bool:
    """Update the step; with ``was`` (its row as read), only if its status and dataset are still those:
    False when another writer (another node on the same index) changed it since. On PostgreSQL the
    second of two concurrent updates waits for the first's commit, then sees the new row."""
    statement = update(_MPPS).where(_MPPS.c.sop_instance_uid == sop_instance_uid)
    if was is not None:
        statement = statement.where(
            _MPPS.c.status.is_not_distinct_from(was["status"]), _MPPS.c.dataset.is_not_distinct_from(was["dataset"])
        )
    result = conn.execute(statement.values(**values, updated_at=dt.datetime.now(dt.UTC)))
    return bool(result.rowcount)


def mpps_statuses_of_entry(conn: Connection, worklist_pk: int, study_instance_uid: str) -> list[str]:
    """The statuses of the steps linked to worklist entry ``worklist_pk`` among those of the study
    (the study's index narrows them: ``worklist_pk`` has none)."""
    query = select(_MPPS.c.status).where(
        _MPPS.c.study_instance_uid == study_instance_uid, _MPPS.c.worklist_pk == worklist_pk
    )
    return [str(status) for (status,) in conn.execute(query)]


def completed_mpps(conn: Connection, study_instance_uid: str | None = None) -> list[dict[str, Any]]:
    query = select(_MPPS).where(_MPPS.c.status == "COMPLETED").order_by(_MPPS.c.id)
    if study_instance_uid is not None:
        query = query.where(_MPPS.c.study_instance_uid == study_instance_uid)
    return [dict(row) for row in conn.execute(query).mappings()]


# ------------------------------------------------------------------ instances and completion


def stored_instances(conn: Connection, sop_instance_uids: Sequence[str]) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of those among ``sop_instance_uids`` in the index."""
    found: dict[str, str] = {}
    uids = list(dict.fromkeys(sop_instance_uids))
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        rows = conn.execute(
            select(_INS.c.sop_instance_uid, _INS.c.sop_class_uid).where(_INS.c.sop_instance_uid.in_(chunk))
        )
        found.update({str(uid): str(cls or "") for uid, cls in rows})
    return found


def mark_study_complete(conn: Connection, study_instance_uid: str, mpps_uid: str) -> bool:
    """Record the completion once; True when it is new."""
    if conn.execute(select(_DONE.c.id).where(_DONE.c.study_instance_uid == study_instance_uid)).first():
        return False
    conn.execute(
        insert(_DONE).values(
            study_instance_uid=study_instance_uid, mpps_sop_instance_uid=mpps_uid, completed_at=dt.datetime.now(dt.UTC)
        )
    )
    return True


def studies_awaiting_completion(conn: Connection, since: dt.datetime | None = None) -> list[str]:
    """Studies with a COMPLETED procedure step that are not marked complete (their instances have not
    all arrived, or another node completed the step and this one does not know yet); ``since``: only
    steps changed since then."""
    marked = select(_DONE.c.study_instance_uid)
    query = (
        select(_MPPS.c.study_instance_uid)
        .where(_MPPS.c.status == "COMPLETED", _MPPS.c.study_instance_uid.not_in(marked))
        .distinct()
    )
    if since is not None:
        query = query.where(_MPPS.c.updated_at >= since)
    return [str(uid) for (uid,) in conn.execute(query) if uid]


def completed_studies(conn: Connection) -> dict[str, dt.datetime]:
    rows = conn.execute(select(_DONE.c.study_instance_uid, _DONE.c.completed_at).order_by(_DONE.c.id))
    return {str(uid): at for uid, at in rows}


def mpps_for_study(conn: Connection, study_instance_uid: str) -> list[dict[str, Any]]:
    """Every MPPS of the study, in creation order."""
    query = select(_MPPS).where(_MPPS.c.study_instance_uid == study_instance_uid).order_by(_MPPS.c.id)
    return [dict(row) for row in conn.execute(query).mappings()]
