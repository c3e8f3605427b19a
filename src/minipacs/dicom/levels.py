"""Query/Retrieve levels and information models (PS3.4 C.6), with every spelling we use.

One row per level: its DICOM name (the value of QueryRetrieveLevel (0008,0052),
also what the CLI's ``-L`` takes), its Unique Key, and how URLs and the JSON API
name it (PS3.18 resource names where PS3.18 has one: ``studies``, ``series``,
``instances``). The IMAGE level is spelled IMAGE on the wire (PS3.4 C.6.1.1.5)
and "instance" everywhere else.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from minipacs.dicom.uids import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    PATIENT_STUDY_ONLY_FIND,
    PATIENT_STUDY_ONLY_GET,
    PATIENT_STUDY_ONLY_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)


class Level(enum.Enum):
    """PS3.4 C.6.1.1 / C.6.2.1 Query/Retrieve levels, top to bottom."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


@dataclass(frozen=True)
class LevelSpelling:
    """How one level is named and keyed."""

    level: Level
    unique_key: str  # keyword of the level's Unique Key (PS3.4 C.6.1.1.2-5, C.6.2.1.2-4)
    uid_list: bool  # a retrieve may name several with a list of UIDs (PS3.4 C.4.2.2.1; PatientID is no UID)
    resource: str  # the collection in URLs: /api/<resource>/<id>
    noun: str  # one resource, in the JSON API, the journal and delete: "patient", ..., "instance"


# PS3.4 C.6.1.1 (Patient Root) and C.6.2.1 (Study Root): the levels and their Unique Keys.
LEVEL_SPELLINGS: Final[Mapping[Level, LevelSpelling]] = {
    Level.PATIENT: LevelSpelling(Level.PATIENT, "PatientID", False, "patients", "patient"),
    Level.STUDY: LevelSpelling(Level.STUDY, "StudyInstanceUID", True, "studies", "study"),
    Level.SERIES: LevelSpelling(Level.SERIES, "SeriesInstanceUID", True, "series", "series"),
    Level.IMAGE: LevelSpelling(Level.IMAGE, "SOPInstanceUID", True, "instances", "instance"),
}
#: The DICOM names, top down: the values QueryRetrieveLevel and the CLI's -L accept.
LEVEL_NAMES: Final[tuple[str, ...]] = tuple(level.value for level in Level)

_BY_SPELLING: Final[Mapping[str, Level]] = {
    spelling: info.level
    for info in LEVEL_SPELLINGS.values()
    for spelling in (info.level.value.lower(), info.resource, info.noun)
}


def parse_level(text: str) -> Level | None:
    """A level from any of its spellings, in any case ("IMAGE", "instances", "Study"); else None."""
    return _BY_SPELLING.get(text.strip().lower())


def spelling(level: Level) -> LevelSpelling:
    return LEVEL_SPELLINGS[level]


@dataclass(frozen=True)
class InformationModel:
    """A Query/Retrieve information model (PS3.4 C.6): its levels and SOP classes."""

    name: str
    levels: tuple[Level, ...]
    key: str = ""  # how the CLI (-P/-S/-O) and the JSON API name it
    find_sop_class: str = ""
    move_sop_class: str = ""
    get_sop_class: str = ""
    #: How core/retrieve.py and the retrieve services name it ("PATIENT", "STUDY", "PATIENT/STUDY").
    retrieve_name: str = ""
    #: Retired from the standard (PS3.4 C.6.3): served to the peers that still use it, never proposed by us.
    retired: bool = False


# PS3.4 C.6.1 Patient Root, C.6.2 Study Root, C.6.3 Patient/Study Only (retired); Table C.4-1, C.5-1..3
PATIENT_ROOT: Final = InformationModel(
    "Patient Root",
    (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    "patient",
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_MOVE,
    PATIENT_ROOT_GET,
    "PATIENT",
)
STUDY_ROOT: Final = InformationModel(
    "Study Root",
    (Level.STUDY, Level.SERIES, Level.IMAGE),
    "study",
    STUDY_ROOT_FIND,
    STUDY_ROOT_MOVE,
    STUDY_ROOT_GET,
    "STUDY",
)
PATIENT_STUDY_ONLY: Final = InformationModel(
    "Patient/Study Only",
    (Level.PATIENT, Level.STUDY),
    "patient-study",
    PATIENT_STUDY_ONLY_FIND,
    PATIENT_STUDY_ONLY_MOVE,
    PATIENT_STUDY_ONLY_GET,
    "PATIENT/STUDY",
    retired=True,
)
INFORMATION_MODELS: Final[tuple[InformationModel, ...]] = (PATIENT_ROOT, STUDY_ROOT, PATIENT_STUDY_ONLY)
#: The models a C-MOVE or C-GET uses, by their ``retrieve_name`` (how core/retrieve.py names them).
RETRIEVE_MODELS: Final[Mapping[str, InformationModel]] = {
    model.retrieve_name: model for model in INFORMATION_MODELS if model.move_sop_class
}

__all__ = [
    "INFORMATION_MODELS",
    "LEVEL_NAMES",
    "LEVEL_SPELLINGS",
    "PATIENT_ROOT",
    "PATIENT_STUDY_ONLY",
    "RETRIEVE_MODELS",
    "STUDY_ROOT",
    "InformationModel",
    "Level",
    "LevelSpelling",
    "parse_level",
    "spelling",
]
