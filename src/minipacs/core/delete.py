"""Deleting resources from the archive: index rows first (one writer transaction), then files.

A patient, study, series or instance goes with everything below it; a series,
study or patient left without children goes too. Each resource removed gets a
"Deleted" row in the changes journal (core/changes.py), in the same transaction.
Files are removed after the commit: a crash in between leaves unindexed files
(harmless), never rows pointing to missing files. A study that loses instances
also loses its completion mark (core/mpps.py): it is checked again at once, and
waits for its referenced instances if one of them went.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, delete, exists, literal, select

from minipacs.core.archive import Archive
from minipacs.core.changes import ChangeType, change_row, record
from minipacs.core.errors import NotFound
from minipacs.core.metadata import delete_rows
from minipacs.dicom.levels import LEVEL_SPELLINGS, Level
from minipacs.index.schema import Instance, Patient, Series, Study, StudyCompletion

log = logging.getLogger(__name__)

# level (its noun in dicom/levels.py: "patient", ..., "instance") -> the column naming a resource at that level
LEVEL_COLUMNS: Final[dict[str, Any]] = {
    LEVEL_SPELLINGS[level].noun: column
    for level, column in (
        (Level.PATIENT, Patient.patient_id),
        (Level.STUDY, Study.study_instance_uid),
        (Level.SERIES, Series.series_instance_uid),
        (Level.IMAGE, Instance.sop_instance_uid),
    )
}


# Resources left without children once instances are gone, bottom up: (level, table, their
# (primary key, UID or Patient ID, Study Instance UID or "")).
_ORPHANS: Final[tuple[tuple[str, Any, Any], ...]] = (
    ("series", Series, select(Series.id, Series.series_instance_uid, Study.study_instance_uid)
     .join(Study, Series.study_pk == Study.id).where(~exists().where(Instance.series_pk == Series.id))),
    ("study", Study, select(Study.id, Study.study_instance_uid, Study.study_instance_uid.label("study"))
     .where(~exists().where(Series.study_pk == Study.id))),
    ("patient", Patient, select(Patient.id, Patient.patient_id, literal("").label("study"))
     .where(~exists().where(Study.patient_pk == Patient.id))),
)


@dataclass(frozen=True)
class Deleted:
    instances: int
    bytes: int


@dataclass(frozen=True)
class _Removed:
    files: list[tuple[str, str, int]]  # (SOP Instance UID, blob key, size)
    uncompleted: set[str]  # studies whose completion mark went with the deletion


def _delete_rows(conn: Connection, level: str, uid: str) -> _Removed:
    rows = conn.execute(
        select(Instance.id, Instance.sop_instance_uid, Instance.blob_key, Instance.size, Study.study_instance_uid)
        .join(Series, Instance.series_pk == Series.id).join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id).where(LEVEL_COLUMNS[level] == uid)).all()
    if not rows:
        # an empty study/series/patient row may still exist: remove it too
        if conn.execute(select(LEVEL_COLUMNS[level]).where(LEVEL_COLUMNS[level] == uid).limit(1)).first() is None:
            raise NotFound(f"{level} {uid[:70]!r} is not in the archive")
    ids = [row.id for row in rows]
    for start in range(0, len(ids), 500):
        conn.execute(delete(Instance).where(Instance.id.in_(ids[start:start + 500])))
    delete_rows(conn, [row.sop_instance_uid for row in rows])
    now = dt.datetime.now(dt.UTC)
    journal = [change_row(ChangeType.DELETED, row.sop_instance_uid, row.study_instance_uid, now, "instance")
               for row in rows]
    for parent, table, orphans in _ORPHANS:  # parents left without children, bottom up
        found = conn.execute(orphans).all()
        for start in range(0, len(found), 500):
            conn.execute(delete(table).where(table.id.in_([r[0] for r in found[start:start + 500]])))
        journal += [change_row(ChangeType.DELETED, str(r[1]), str(r[2]), now, parent) for r in found]
    record(conn, journal)
    studies = sorted({row.study_instance_uid for row in rows} | ({uid} if level == "study" else set()))
    uncompleted: set[str] = set()
    for start in range(0, len(studies), 500):
        chunk = studies[start:start + 500]
        gone = conn.execute(delete(StudyCompletion).where(StudyCompletion.study_instance_uid.in_(chunk))
                            .returning(StudyCompletion.study_instance_uid)).scalars().all()
        uncompleted.update(str(study) for study in gone)
    return _Removed([(row.sop_instance_uid, row.blob_key, row.size) for row in rows], uncompleted)


async def delete_resource(archive: Archive, level: str, uid: str) -> Deleted:
    """Delete a patient (by Patient ID), study, series or instance (by UID); raises NotFound."""
    if level not in LEVEL_COLUMNS:
        raise ValueError(f"unknown level {level!r}")
    removed = await archive.write(lambda conn: _delete_rows(conn, level, uid), removes_entities=True)
    rows = removed.files
    if removed.uncompleted:
        for listener in archive.on_uncompleted:
            try:
                listener(removed.uncompleted)
            except Exception:  # noqa: BLE001 - a listener never spoils a deletion
                log.exception("after-deletion listener %r failed", listener)

    def remove_files() -> None:
        for _, key, _ in rows:
            try:
                archive.blobs.delete(key)
            except OSError as exc:
                log.error("deleted instance file %s could not be removed: %s", key, exc)

    await asyncio.to_thread(remove_files)
    log.info("deleted %s %s: %d instance(s)", level, uid, len(rows))
    return Deleted(len(rows), sum(size for _, _, size in rows))


__all__ = ["Deleted", "LEVEL_COLUMNS", "delete_resource"]
