"""What the query engine knows about the information models (PS3.4 C.6): levels,
their tables, the keys the index holds, and the keys it computes (C.3.4, C.6.1.1).

Data tables only; core/query.py runs queries with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from sqlalchemy import Select, Table, func, select

# moved to dicom/levels.py; re-exported (``as``) until the callers are updated
from minipacs.dicom.levels import LEVEL_SPELLINGS
from minipacs.dicom.levels import PATIENT_ROOT as PATIENT_ROOT  # noqa: PLC0414 - explicit re-export
from minipacs.dicom.levels import PATIENT_STUDY_ONLY as PATIENT_STUDY_ONLY  # noqa: PLC0414 - explicit re-export
from minipacs.dicom.levels import STUDY_ROOT as STUDY_ROOT  # noqa: PLC0414 - explicit re-export
from minipacs.dicom.levels import InformationModel as InformationModel  # noqa: PLC0414 - explicit re-export
from minipacs.dicom.levels import Level as Level  # noqa: PLC0414 - explicit re-export
from minipacs.index import repository as repo
from minipacs.index.matching import ColumnKind
from minipacs.index.schema import Instance, Patient, Series, Study, StudyCompletion

_ORDER: Final = {level: index for index, level in enumerate(Level)}


@dataclass(frozen=True)
class LevelTable:
    """One level's table in the index, its unique key and the link to the level above."""

    table: Table
    unique_key: str
    columns: Mapping[str, tuple[str, repo.Converter]]
    parent_fk: str | None


# PS3.4 C.6.1.1.2-5: unique keys per level; index/schema.py tables
LEVELS: Final[Mapping[Level, LevelTable]] = {
    level: LevelTable(cast(Table, model.__table__), LEVEL_SPELLINGS[level].unique_key, columns, parent_fk)
    for level, model, columns, parent_fk in (
        (Level.PATIENT, Patient, repo.PATIENT_COLUMNS, None),
        (Level.STUDY, Study, repo.STUDY_COLUMNS, "patient_pk"),
        (Level.SERIES, Series, repo.SERIES_COLUMNS, "study_pk"),
        (Level.IMAGE, Instance, repo.INSTANCE_COLUMNS, "series_pk"),
    )
}

_KIND_OF_CONVERTER: Final[Mapping[Callable[[str], Any], ColumnKind]] = {
    repo.as_date: ColumnKind.DATE,
    repo.as_time: ColumnKind.TIME,
    repo.as_int: ColumnKind.INT,
    repo.normalise_name: ColumnKind.NAME,
}


@dataclass(frozen=True)
class IndexedKey:
    """A key the index holds: the column matched on and the column answered from."""

    level: Level
    match_column: str
    value_column: str
    kind: ColumnKind


def _indexed_keys() -> dict[str, IndexedKey]:
    """Keyword → IndexedKey, derived from repository's keyword ↔ column tables."""
    found: dict[str, IndexedKey] = {}
    for level, spec in LEVELS.items():
        by_keyword: dict[str, list[tuple[str, repo.Converter]]] = {}
        for column, (keyword, convert) in spec.columns.items():
            by_keyword.setdefault(keyword, []).append((column, convert))
        for keyword, columns in by_keyword.items():
            value_column = next(c for c, conv in columns if conv is repo.as_text or conv is repo.as_int)
            typed = [(c, conv) for c, conv in columns if conv is not repo.as_text]
            match_column, convert = typed[0] if typed else (value_column, repo.as_text)
            kind = _KIND_OF_CONVERTER.get(convert, ColumnKind.UID if keyword.endswith("UID") else ColumnKind.TEXT)
            found[keyword] = IndexedKey(level, match_column, value_column, kind)
    return found


INDEXED_KEYS: Final[Mapping[str, IndexedKey]] = _indexed_keys()


# ------------------------------------------------------------------ computed keys

_PAT, _STU, _SER, _INS = (LEVELS[lv].table for lv in Level)
#: Complete studies (core/mpps.py), keyed by Study Instance UID.
_DONE: Final = cast(Table, StudyCompletion.__table__)


def _count(target: Table, *joins: tuple[Table, Any]) -> Callable[[Level], Select[Any]]:
    """count(target) grouped by the key of the owning level, over the given join path."""

    def build(level: Level) -> Select[Any]:
        frm: Any = target
        for table, on in joins:
            frm = frm.join(table, on)
        owner = _owner_column(level)
        return select(owner, func.count(target.c.id)).select_from(frm).group_by(owner)

    return build


def _distinct(column: Any, *joins: tuple[Table, Any]) -> Callable[[Level], Select[Any]]:
    def build(level: Level) -> Select[Any]:
        frm: Any = column.table
        for table, on in joins:
            frm = frm.join(table, on)
        owner = _owner_column(level)
        return select(owner, column).select_from(frm).group_by(owner, column)

    return build


def _completion(level: Level) -> Select[Any]:
    """Study Status ID of each complete study; a study that is not complete has none."""
    return select(_STU.c.id, _DONE.c.study_status_id).select_from(
        _STU.join(_DONE, _DONE.c.study_instance_uid == _STU.c.study_instance_uid))


def _owner_column(level: Level) -> Any:
    return {Level.PATIENT: _STU.c.patient_pk, Level.STUDY: _SER.c.study_pk, Level.SERIES: _INS.c.series_pk}[level]


@dataclass(frozen=True)
class ComputedKey:
    level: Level
    vr: str
    aggregate: Callable[[Level], Select[Any]]
    joined: bool  # True: several values joined by '\'; False: a count
    #: Column matched (through EXISTS) when the key carries a value; None: not matchable.
    match_column: Any = None


# PS3.4 C.3.4 (Table C.3-x, "Additional Query/Retrieve Attributes") and C.6.1.1.x
COMPUTED_KEYS: Final[Mapping[str, ComputedKey]] = {
    "NumberOfPatientRelatedStudies": ComputedKey(Level.PATIENT, "IS", _count(_STU), False),
    "NumberOfPatientRelatedSeries": ComputedKey(
        Level.PATIENT, "IS", _count(_SER, (_STU, _SER.c.study_pk == _STU.c.id)), False),
    "NumberOfPatientRelatedInstances": ComputedKey(
        Level.PATIENT, "IS",
        _count(_INS, (_SER, _INS.c.series_pk == _SER.c.id), (_STU, _SER.c.study_pk == _STU.c.id)), False),
    "NumberOfStudyRelatedSeries": ComputedKey(Level.STUDY, "IS", _count(_SER), False),
    "NumberOfStudyRelatedInstances": ComputedKey(
        Level.STUDY, "IS", _count(_INS, (_SER, _INS.c.series_pk == _SER.c.id)), False),
    "ModalitiesInStudy": ComputedKey(Level.STUDY, "CS", _distinct(_SER.c.modality), True, _SER.c.modality),
    "SOPClassesInStudy": ComputedKey(
        Level.STUDY, "UI", _distinct(_INS.c.sop_class_uid, (_SER, _INS.c.series_pk == _SER.c.id)), True,
        _INS.c.sop_class_uid),
    "NumberOfSeriesRelatedInstances": ComputedKey(Level.SERIES, "IS", _count(_INS), False),
    # Study Status ID (0032,000A), CS, retired in PS3.6 but known to DCMTK and viewers: "COMPLETED"
    # once the study's MPPS is COMPLETED and every instance it references is stored (issue 5), else empty.
    "StudyStatusID": ComputedKey(Level.STUDY, "CS", _completion, True, _DONE.c.study_status_id),
}

#: Keys answered with a constant (PS3.4 C.4.1.1.3.2 / C.6.1.1.x).
CONSTANT_KEYS: Final[Mapping[str, str]] = {"InstanceAvailability": "ONLINE"}
#: Keys the query engine leaves to the caller (the service knows them).
SERVICE_KEYS: Final = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle"})
