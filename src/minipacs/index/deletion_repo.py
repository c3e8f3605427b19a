"""SQL of deleting resources (core/delete.py orders the steps and journals them), in the
writer's transaction: the instances under a resource, the parents left without children,
the completion marks of the studies that lost instances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

from sqlalchemy import Connection, delete, exists, select

from minipacs.index.entities import Entity
from minipacs.index.repository import study_of_patient_key
from minipacs.index.schema import Instance, Patient, Series, Study, StudyCompletion

#: Rows per DELETE ... IN (...) statement.
_CHUNK: Final = 500

# entity -> the column naming a resource of it (a UID; the Patient ID for a patient)
NAME_COLUMNS: Final[Mapping[Entity, Any]] = {
    Entity.PATIENT: Patient.patient_id,
    Entity.STUDY: Study.study_instance_uid,
    Entity.SERIES: Series.series_instance_uid,
    Entity.INSTANCE: Instance.sop_instance_uid,
}

# Resources left without children once instances are gone, bottom up: (entity, table, their
# (primary key, UID or Patient ID, Study Instance UID or "")).
_ORPHANS: Final[tuple[tuple[Entity, Any, Any], ...]] = (
    (
        Entity.SERIES,
        Series,
        select(Series.id, Series.series_instance_uid, Study.study_instance_uid)
        .join(Study, Series.study_pk == Study.id)
        .where(~exists().where(Instance.series_pk == Series.id)),
    ),
    (
        Entity.STUDY,
        Study,
        select(Study.id, Study.study_instance_uid, Study.study_instance_uid.label("study")).where(
            ~exists().where(Series.study_pk == Study.id)
        ),
    ),
    # a patient's study: that of a patient without a Patient ID (its key names it), else ""
    (
        Entity.PATIENT,
        Patient,
        select(Patient.id, Patient.patient_id, Patient.patient_key.label("study")).where(
            ~exists().where(Study.patient_pk == Patient.id)
        ),
    ),
)


class DeletedInstance(NamedTuple):
    sop_instance_uid: str
    blob_key: str
    size: int
    study_instance_uid: str


class DeletedParent(NamedTuple):
    """A patient, study or series removed because it had no children left."""

    entity: Entity
    name: str  # UID, or Patient ID ("" for a patient without one)
    study_instance_uid: str  # "" for a patient, but that of a patient without a Patient ID (kept per study)


def delete_instances(conn: Connection, entity: Entity, name: str) -> list[DeletedInstance] | None:
    """Delete every instance under the resource ``name`` of ``entity``; what was deleted, or
    None when no such resource exists (an empty patient, study or series row is no instance: [])."""
    column = NAME_COLUMNS[entity]
    rows = conn.execute(
        select(Instance.id, Instance.sop_instance_uid, Instance.blob_key, Instance.size, Study.study_instance_uid)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(column == name)
    ).all()
    if not rows and conn.execute(select(column).where(column == name).limit(1)).first() is None:
        return None
    ids = [row.id for row in rows]
    for start in range(0, len(ids), _CHUNK):
        conn.execute(delete(Instance).where(Instance.id.in_(ids[start : start + _CHUNK])))
    return [DeletedInstance(row.sop_instance_uid, row.blob_key, row.size, row.study_instance_uid) for row in rows]


def delete_orphans(conn: Connection) -> list[DeletedParent]:
    """Delete series, then studies, then patients left without children; what was deleted, bottom up."""
    removed: list[DeletedParent] = []
    for entity, table, orphans in _ORPHANS:
        found = conn.execute(orphans).all()
        for start in range(0, len(found), _CHUNK):
            conn.execute(delete(table).where(table.id.in_([r[0] for r in found[start : start + _CHUNK]])))
        removed += [
            DeletedParent(entity, str(r[1]), study_of_patient_key(str(r[2])) if entity is Entity.PATIENT else str(r[2]))
            for r in found
        ]
    return removed


def delete_completions(conn: Connection, studies: Sequence[str]) -> set[str]:
    """Withdraw the completion marks of ``studies``; the Study Instance UIDs that had one."""
    uncompleted: set[str] = set()
    for start in range(0, len(studies), _CHUNK):
        chunk = list(studies[start : start + _CHUNK])
        gone = (
            conn.execute(
                delete(StudyCompletion)
                .where(StudyCompletion.study_instance_uid.in_(chunk))
                .returning(StudyCompletion.study_instance_uid)
            )
            .scalars()
            .all()
        )
        uncompleted.update(str(study) for study in gone)
    return uncompleted


__all__ = [
    "NAME_COLUMNS",
    "DeletedInstance",
    "DeletedParent",
    "delete_completions",
    "delete_instances",
    "delete_orphans",
]
