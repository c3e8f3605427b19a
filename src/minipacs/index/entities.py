"""The four tables of the patient → study → series → instance hierarchy, as the index's
interface names them (PS3.4 C.6.1.1: one per Query/Retrieve level).

The core names levels its own way (core/query_model.py, core/retrieve.py) and maps them
onto :class:`Entity`; everything the index knows about a level's table (its SQLAlchemy
table, the link to its parent, its keyword ↔ column table, its unique column) is here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast

from sqlalchemy import Table

from minipacs.index import repository as repo
from minipacs.index.schema import Instance, Patient, Series, Study


class Entity(enum.Enum):
    """A table of the hierarchy, top down; the value is the name the changes journal uses."""

    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


#: Position from the top (PATIENT 0 .. INSTANCE 3).
DEPTH: Final[Mapping[Entity, int]] = {entity: index for index, entity in enumerate(Entity)}


@dataclass(frozen=True)
class EntityTable:
    """One entity's table, the column linking it to its parent, its keyword ↔ column table
    (index/repository.py) and the column of its unique key."""

    table: Table
    parent_fk: str | None
    columns: Mapping[str, tuple[str, repo.Converter]]
    unique_column: str


# PS3.4 C.6.1.1.2-5: unique keys per level (PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID)
ENTITIES: Final[Mapping[Entity, EntityTable]] = {
    Entity.PATIENT: EntityTable(cast(Table, Patient.__table__), None, repo.PATIENT_COLUMNS, "patient_id"),
    Entity.STUDY: EntityTable(cast(Table, Study.__table__), "patient_pk", repo.STUDY_COLUMNS, "study_instance_uid"),
    Entity.SERIES: EntityTable(cast(Table, Series.__table__), "study_pk", repo.SERIES_COLUMNS, "series_instance_uid"),
    Entity.INSTANCE: EntityTable(
        cast(Table, Instance.__table__), "series_pk", repo.INSTANCE_COLUMNS, "sop_instance_uid"
    ),
}


__all__ = ["DEPTH", "ENTITIES", "Entity", "EntityTable"]
