"""SQL of corrections (core/corrections.py): the rows of one patient, study or series, their
update, the instances under them, patient merges, series moves, and the corrections log.

Runs on a Connection the caller owns (the archive's writer transaction for every write).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple, cast

from sqlalchemy import Connection, Table, func, insert, select, update

from minipacs.index.entities import ENTITIES, Entity
from minipacs.index.schema import Correction, Instance, Patient, Series, Study

_CORRECTIONS: Final = cast(Table, Correction.__table__)
_PATIENTS: Final = cast(Table, Patient.__table__)
_STUDIES: Final = cast(Table, Study.__table__)
_SERIES: Final = cast(Table, Series.__table__)

#: Columns of one correction, as :func:`corrections` answers them.
CORRECTION_FIELDS: Final = (
    "id",
    "operation",
    "level",
    "target",
    "actor",
    "old_values",
    "new_values",
    "state",
    "instances",
    "message",
    "created_at",
    "finished_at",
)


class StoredCopy(NamedTuple):
    """One stored instance under a corrected resource: what a rewrite needs."""

    sop_instance_uid: str
    blob_key: str
    study_instance_uid: str
    series_instance_uid: str


def rows_named(conn: Connection, entity: Entity, name: str) -> list[dict[str, Any]]:
    """Every row of ``entity`` whose unique column (Patient ID, Study or Series Instance UID) is ``name``
    (several patients may share a Patient ID under different issuers)."""
    table = ENTITIES[entity].table
    column = table.c[ENTITIES[entity].unique_column]
    return [dict(row) for row in conn.execute(select(table).where(column == name).order_by(table.c.id)).mappings()]


def row_by_pk(conn: Connection, entity: Entity, pk: int) -> dict[str, Any] | None:
    table = ENTITIES[entity].table
    row = conn.execute(select(table).where(table.c.id == pk)).mappings().first()
    return dict(row) if row is not None else None


def update_row(conn: Connection, entity: Entity, pk: int, values: Mapping[str, Any]) -> None:
    table = ENTITIES[entity].table
    conn.execute(update(table).where(table.c.id == pk).values(**values))


_COPIES: Final = (
    select(Instance.sop_instance_uid, Instance.blob_key, Study.study_instance_uid, Series.series_instance_uid)
    .join(Series, Instance.series_pk == Series.id)
    .join(Study, Series.study_pk == Study.id)
    .order_by(Instance.id)
)

# entity -> the primary-key column its instances are selected by
_SCOPE: Final[Mapping[Entity, Any]] = {
    Entity.PATIENT: Study.patient_pk,
    Entity.STUDY: Study.id,
    Entity.SERIES: Series.id,
}


def copies_under(conn: Connection, entity: Entity, pks: Sequence[int]) -> list[StoredCopy]:
    """The stored instances under the rows ``pks`` of ``entity`` (patient, study or series)."""
    if not pks:
        return []
    return [StoredCopy(*row) for row in conn.execute(_COPIES.where(_SCOPE[entity].in_(list(pks))))]


def count_under(conn: Connection, entity: Entity, pks: Sequence[int]) -> int:
    if not pks:
        return 0
    query = (
        select(func.count(Instance.id))
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(_SCOPE[entity].in_(list(pks)))
    )
    return int(conn.execute(query).scalar_one())


def hierarchy(conn: Connection, series_uids: Sequence[str]) -> dict[str, dict[Entity, dict[str, Any]]]:
    """Series Instance UID -> its series, study and patient rows, for ``series_uids`` (one IN list each 500)."""
    out: dict[str, dict[Entity, dict[str, Any]]] = {}
    uids = sorted(set(series_uids))
    for start in range(0, len(uids), 500):
        rows = conn.execute(
            select(_SERIES, _STUDIES, _PATIENTS)
            .join(_STUDIES, _SERIES.c.study_pk == _STUDIES.c.id)
            .join(_PATIENTS, _STUDIES.c.patient_pk == _PATIENTS.c.id)
            .where(_SERIES.c.series_instance_uid.in_(uids[start : start + 500]))
        )
        for row in rows:
            values = list(row)
            n_series, n_study = len(_SERIES.c), len(_STUDIES.c)
            parts = (
                (Entity.SERIES, _SERIES, values[:n_series]),
                (Entity.STUDY, _STUDIES, values[n_series : n_series + n_study]),
                (Entity.PATIENT, _PATIENTS, values[n_series + n_study :]),
            )
            found = {entity: dict(zip(table.c.keys(), part, strict=True)) for entity, table, part in parts}
            out[str(found[Entity.SERIES]["series_instance_uid"])] = found
    return out


def studies_of_patient(conn: Connection, patient_pk: int) -> list[tuple[int, str]]:
    """(primary key, Study Instance UID) of the patient's studies."""
    rows = conn.execute(
        select(Study.id, Study.study_instance_uid).where(Study.patient_pk == patient_pk).order_by(Study.id)
    )
    return [(int(pk), str(uid)) for pk, uid in rows]


def move_studies(conn: Connection, from_patient: int, to_patient: int) -> None:
    """Every study of patient ``from_patient`` now belongs to ``to_patient`` (a merge)."""
    conn.execute(update(_STUDIES).where(_STUDIES.c.patient_pk == from_patient).values(patient_pk=to_patient))


def move_series(conn: Connection, series_pk: int, to_study: int, now: dt.datetime) -> None:
    """The series now belongs to study ``to_study`` (a split); the study was updated ``now``."""
    conn.execute(update(_SERIES).where(_SERIES.c.id == series_pk).values(study_pk=to_study))
    conn.execute(update(_STUDIES).where(_STUDIES.c.id == to_study).values(updated_at=now))


def insert_correction(conn: Connection, values: Mapping[str, Any]) -> int:
    row = {
        **values,
        "old_values": json.dumps(values["old_values"], sort_keys=True),
        "new_values": json.dumps(values["new_values"], sort_keys=True),
    }
    return int(conn.execute(insert(_CORRECTIONS).values(**row).returning(_CORRECTIONS.c.id)).scalar_one())


def finish_correction(conn: Connection, pk: int, state: str, instances: int, message: str, now: dt.datetime) -> None:
    conn.execute(
        update(_CORRECTIONS)
        .where(_CORRECTIONS.c.id == pk)
        .values(state=state, instances=instances, message=message, finished_at=now)
    )


def corrections(conn: Connection, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The latest corrections, newest first; ``target``: only those of that Patient ID or UID."""
    query = select(_CORRECTIONS).order_by(_CORRECTIONS.c.id.desc()).limit(limit)
    if target is not None:
        query = query.where(_CORRECTIONS.c.target == target)
    out = []
    for row in conn.execute(query).mappings():
        item = {name: row[name] for name in CORRECTION_FIELDS}
        item["old_values"] = json.loads(row["old_values"])
        item["new_values"] = json.loads(row["new_values"])
        out.append(item)
    return out


def patient_merges(conn: Connection) -> list[tuple[int, str, str]]:
    """(correction id, the merged-away Patient ID, the surviving one) of every patient merge that did not
    fail, oldest first."""
    t = _CORRECTIONS
    rows = conn.execute(
        select(t.c.id, t.c.old_values, t.c.target)
        .where(t.c.operation == "merge", t.c.state != "failed")
        .order_by(t.c.id)
    ).all()
    out = []
    for pk, old, target in rows:
        try:
            prior = json.loads(old).get("PatientID", "")
        except (ValueError, AttributeError):
            continue
        if isinstance(prior, str) and prior:
            out.append((int(pk), prior, str(target)))
    return out


__all__ = [
    "CORRECTION_FIELDS",
    "patient_merges",
    "StoredCopy",
    "copies_under",
    "corrections",
    "count_under",
    "finish_correction",
    "hierarchy",
    "insert_correction",
    "move_series",
    "move_studies",
    "row_by_pk",
    "rows_named",
    "studies_of_patient",
    "update_row",
]
