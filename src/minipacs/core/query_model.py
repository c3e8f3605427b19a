"""What the query engine knows about the information models (PS3.4 C.6): levels,
the index entity of each, the keys the index holds, and the keys it computes (C.3.4, C.6.1.1).

Data tables only; core/query.py runs queries with them, index/query_sql.py holds their SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from minipacs.dicom.levels import LEVEL_SPELLINGS, Level
from minipacs.index import repository as repo
from minipacs.index.entities import ENTITIES, Entity
from minipacs.index.matching import ColumnKind

_ORDER: Final = {level: index for index, level in enumerate(Level)}


@dataclass(frozen=True)
class LevelTable:
    """One level's entity in the index (index/entities.py) and its unique key."""

    entity: Entity
    unique_key: str

    @property
    def columns(self) -> Mapping[str, tuple[str, repo.Converter]]:
        """The level's keyword ↔ column table (index/repository.py)."""
        return ENTITIES[self.entity].columns


# PS3.4 C.6.1.1.2-5: unique keys per level
LEVELS: Final[Mapping[Level, LevelTable]] = {
    level: LevelTable(entity, LEVEL_SPELLINGS[level].unique_key)
    for level, entity in (
        (Level.PATIENT, Entity.PATIENT),
        (Level.STUDY, Entity.STUDY),
        (Level.SERIES, Entity.SERIES),
        (Level.IMAGE, Entity.INSTANCE),
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


@dataclass(frozen=True)
class ComputedKey:
    """A key the index computes per match (index/query_sql.py AGGREGATES holds its SQL)."""

    level: Level
    vr: str
    joined: bool  # True: several values joined by '\'; False: a count
    #: Whether a value in the key is matched (through EXISTS on the index rows it is computed from).
    matchable: bool = False
    #: Lower levels the key is answered at too (index/query_sql.py AGGREGATES computes it per entity of
    #: those): a patient's counts at the STUDY level of the Patient Root model, as the Study Root's
    #: STUDY level answers them. Elsewhere a key of an upper level is answered empty.
    answered_below: frozenset[Level] = frozenset()


# PS3.4 C.3.4 (Table C.3-x, "Additional Query/Retrieve Attributes") and C.6.1.1.x
COMPUTED_KEYS: Final[Mapping[str, ComputedKey]] = {
    "NumberOfPatientRelatedStudies": ComputedKey(Level.PATIENT, "IS", False, answered_below=frozenset({Level.STUDY})),
    "NumberOfPatientRelatedSeries": ComputedKey(Level.PATIENT, "IS", False, answered_below=frozenset({Level.STUDY})),
    "NumberOfPatientRelatedInstances": ComputedKey(Level.PATIENT, "IS", False, answered_below=frozenset({Level.STUDY})),
    "NumberOfStudyRelatedSeries": ComputedKey(Level.STUDY, "IS", False),
    "NumberOfStudyRelatedInstances": ComputedKey(Level.STUDY, "IS", False),
    "ModalitiesInStudy": ComputedKey(Level.STUDY, "CS", True, True),
    "SOPClassesInStudy": ComputedKey(Level.STUDY, "UI", True, True),
    "NumberOfSeriesRelatedInstances": ComputedKey(Level.SERIES, "IS", False),
    # Study Status ID (0032,000A), CS, retired in PS3.6 but known to DCMTK and viewers: "COMPLETED"
    # once the study's MPPS is COMPLETED and every instance it references is stored (issue 5), else empty.
    "StudyStatusID": ComputedKey(Level.STUDY, "CS", True, True),
}

#: PS3.4 C.2.2.2.5 with combined datetime matching (negotiated, C.5.1.1): the date key's tag -> the tag of
#: the time key whose range joins it into one range of moments (Study, Series, Acquisition, Content).
COMBINED_DATE_TIME: Final[Mapping[int, int]] = {
    0x00080020: 0x00080030,  # StudyDate, StudyTime
    0x00080021: 0x00080031,  # SeriesDate, SeriesTime
    0x00080022: 0x00080032,  # AcquisitionDate, AcquisitionTime
    0x00080023: 0x00080033,  # ContentDate, ContentTime
}

#: Keys answered with a constant (PS3.4 C.4.1.1.3.2 / C.6.1.1.x).
CONSTANT_KEYS: Final[Mapping[str, str]] = {"InstanceAvailability": "ONLINE"}
#: Keys the query engine leaves to the caller (the service knows them).
SERVICE_KEYS: Final = frozenset({"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle"})
#: Keys answered (from the stored file) but never matched: PS3.4 C.4.1.1.3.1 lists Timezone Offset
#: From UTC beside the key attributes, to say how the identifier's times are meant (C.2.2.2: it "is not
#: matched" under timezone query adjustment, which we do not negotiate: times match as written).
NEVER_MATCHED_KEYS: Final = frozenset({"TimezoneOffsetFromUTC"})
#: Keys left out of a response that has no value for them: PS3.4 C.4.1.1.3.2, Timezone Offset From
#: UTC "shall not be sent with a zero-length value".
OMITTED_WHEN_EMPTY: Final = frozenset({"TimezoneOffsetFromUTC"})
