"""SQL of the retrieve path (core/retrieve.py): the stored instances a set of unique keys names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from sqlalchemy import Connection, select

from minipacs.index.deletion_repo import NAME_COLUMNS
from minipacs.index.entities import Entity
from minipacs.index.schema import Instance, Patient, Series, Study

#: Values per IN list.
_IN_CHUNK: Final = 500


class StoredRow(NamedTuple):
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    blob_key: str
    study_instance_uid: str
    series_instance_uid: str


def stored_instances(conn: Connection, constraints: Sequence[tuple[Entity, Sequence[str]]]) -> list[StoredRow]:
    """The instances under every constraint (entity, unique key values), each once, in study /
    series number / instance number order. Every constraint but the last takes its first value;
    the last is a list (sent in IN lists of 500)."""
    base = (
        select(
            Instance.sop_class_uid,
            Instance.sop_instance_uid,
            Instance.transfer_syntax_uid,
            Instance.blob_key,
            Study.study_instance_uid,
            Series.series_instance_uid,
        )
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
    )
    for entity, values in constraints[:-1]:
        base = base.where(NAME_COLUMNS[entity] == values[0])
    entity, values = constraints[-1]
    column = NAME_COLUMNS[entity]
    order = (Study.id, Series.series_number, Series.id, Instance.instance_number, Instance.id)
    rows: list[StoredRow] = []
    seen: set[str] = set()
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start : start + _IN_CHUNK]
        for row in conn.execute(base.where(column.in_(chunk)).order_by(*order)):
            if row.sop_instance_uid not in seen:
                seen.add(row.sop_instance_uid)
                rows.append(StoredRow(*row))
    return rows


__all__ = ["StoredRow", "stored_instances"]
