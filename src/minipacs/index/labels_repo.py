"""SQL of study labels (core/labels.py gives them their meaning): one row per (study, label)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final, cast

from sqlalchemy import ColumnElement, Connection, Table, delete, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite

from minipacs.index.schema import Study, StudyLabel

_LABELS: Final = cast(Table, StudyLabel.__table__)
#: Rows per ``IN (...)``.
_CHUNK: Final = 500
#: Dialect -> an INSERT that leaves a label already there alone: two nodes putting one label on one
#: study at once both saw it missing, and the second plain INSERT failed on uq_study_labels (HTTP 500).
_INSERT_IGNORING: Final = {
    "sqlite": sqlite.insert(_LABELS).on_conflict_do_nothing(index_elements=["study_instance_uid", "label"]),
    "postgresql": postgresql.insert(_LABELS).on_conflict_do_nothing(index_elements=["study_instance_uid", "label"]),
}


def study_exists(conn: Connection, study: str) -> bool:
    return conn.execute(select(Study.id).where(Study.study_instance_uid == study).limit(1)).first() is not None


def labels_of(conn: Connection, study: str) -> list[str]:
    """The labels of one study, sorted."""
    return [
        str(label)
        for label in conn.execute(
            select(_LABELS.c.label).where(_LABELS.c.study_instance_uid == study).order_by(_LABELS.c.label)
        ).scalars()
    ]


def labels_of_studies(conn: Connection, studies: Sequence[str]) -> dict[str, list[str]]:
    """Study Instance UID -> its labels (sorted), for the studies that have any."""
    found: dict[str, list[str]] = {}
    for start in range(0, len(studies), _CHUNK):
        rows = conn.execute(
            select(_LABELS.c.study_instance_uid, _LABELS.c.label)
            .where(_LABELS.c.study_instance_uid.in_(list(studies[start : start + _CHUNK])))
            .order_by(_LABELS.c.study_instance_uid, _LABELS.c.label)
        )
        for study, label in rows:
            found.setdefault(str(study), []).append(str(label))
    return found


def has_label(conn: Connection, study: str, label: str) -> bool:
    return (
        conn.execute(
            select(_LABELS.c.id).where(_LABELS.c.study_instance_uid == study, _LABELS.c.label == label).limit(1)
        ).first()
        is not None
    )


def add_label(conn: Connection, study: str, label: str, now: dt.datetime) -> bool:
    """Put ``label`` on ``study``; False when it was there already."""
    if has_label(conn, study, label):
        return False
    values = {"study_instance_uid": study, "label": label, "created_at": now}
    return bool(conn.execute(_INSERT_IGNORING[conn.dialect.name].values(values)).rowcount)


def remove_label(conn: Connection, study: str, label: str) -> bool:
    """Take ``label`` off ``study``; False when it was not there."""
    gone = conn.execute(delete(_LABELS).where(_LABELS.c.study_instance_uid == study, _LABELS.c.label == label))
    return bool(gone.rowcount)


def delete_for_studies(conn: Connection, studies: Sequence[str]) -> None:
    """Remove every label of ``studies`` (they were deleted)."""
    for start in range(0, len(studies), _CHUNK):
        conn.execute(delete(_LABELS).where(_LABELS.c.study_instance_uid.in_(list(studies[start : start + _CHUNK]))))


def all_labels(conn: Connection) -> list[tuple[str, int]]:
    """Every label in use, with how many studies carry it."""
    rows = conn.execute(
        select(_LABELS.c.label, func.count(_LABELS.c.id)).group_by(_LABELS.c.label).order_by(_LABELS.c.label)
    )
    return [(str(label), int(count)) for label, count in rows]


def labelled_clause(label: str) -> ColumnElement[bool]:
    """EXISTS: the study of the enclosing query (``studies`` table) carries ``label``."""
    return exists(
        select(_LABELS.c.id).where(
            _LABELS.c.study_instance_uid == cast(Table, Study.__table__).c.study_instance_uid,
            _LABELS.c.label == label,
        )
    )


__all__ = [
    "add_label",
    "all_labels",
    "delete_for_studies",
    "has_label",
    "labelled_clause",
    "labels_of",
    "labels_of_studies",
    "remove_label",
    "study_exists",
]
