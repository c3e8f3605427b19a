"""SQL of retention (core/retention.py decides): what each study weighs, when it is dated and last
received, whether it carries a protecting label."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from sqlalchemy import Connection, func, select

from minipacs.index.labels_repo import labelled_clause
from minipacs.index.schema import Instance, Series, Study

#: Studies per ``IN (...)``.
_CHUNK: Final = 500


class StudyFacts(NamedTuple):
    study_instance_uid: str
    study_date: dt.date | None
    #: When its last instance arrived (``studies.updated_at``).
    last_arrival: dt.datetime
    bytes: int
    #: Carries the rule's protecting label.
    protected: bool


def study_facts(conn: Connection, protect_label: str, only: Sequence[str] | None = None) -> list[StudyFacts]:
    """Every study (or those of ``only``): its date, last arrival, stored bytes, protection."""
    protected = labelled_clause(protect_label) if protect_label else None
    columns: list[Any] = [
        Study.study_instance_uid,
        Study.study_date,
        Study.updated_at,
        func.coalesce(func.sum(Instance.size), 0),
    ]
    if protected is not None:
        columns.append(protected.label("protected"))
    base = (
        select(*columns)
        .select_from(Study)
        .outerjoin(Series, Series.study_pk == Study.id)
        .outerjoin(Instance, Instance.series_pk == Series.id)
        .group_by(Study.id, Study.study_instance_uid, Study.study_date, Study.updated_at)
    )
    statements = (
        [base]
        if only is None
        else [
            base.where(Study.study_instance_uid.in_(list(only[start : start + _CHUNK])))
            for start in range(0, len(only), _CHUNK)
        ]
    )
    found: list[StudyFacts] = []
    for statement in statements:
        for row in conn.execute(statement):
            values: tuple[Any, ...] = tuple(row)
            found.append(
                StudyFacts(
                    str(values[0]),
                    values[1],
                    values[2],
                    int(values[3]),
                    bool(values[4]) if protected is not None else False,
                )
            )
    return found


def study_guard_facts(conn: Connection, study: str, protect_label: str) -> tuple[dt.datetime, bool] | None:
    """(last arrival, protected) of one study, read in the deleting transaction; None if it is gone."""
    row = conn.execute(select(Study.updated_at).where(Study.study_instance_uid == study)).first()
    if row is None:
        return None
    if not protect_label:
        return row[0], False
    carried = conn.execute(
        select(labelled_clause(protect_label)).select_from(Study).where(Study.study_instance_uid == study)
    ).scalar()
    return row[0], bool(carried)


__all__ = ["StudyFacts", "study_facts", "study_guard_facts"]
