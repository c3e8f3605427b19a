"""dicom/levels.py: the Query/Retrieve levels and models, and every table derived from them."""

from __future__ import annotations

import pytest

from minipacs.dicom import uids
from minipacs.dicom.levels import (
    INFORMATION_MODELS,
    LEVEL_NAMES,
    LEVEL_SPELLINGS,
    PATIENT_ROOT,
    PATIENT_STUDY_ONLY,
    RETRIEVE_MODELS,
    STUDY_ROOT,
    Level,
    parse_level,
)


def test_the_standard_spellings() -> None:
    """PS3.4 C.6.1.1: the QueryRetrieveLevel values are PATIENT, STUDY, SERIES and IMAGE (not
    INSTANCE); PS3.18 10.4 names the resources studies, series and instances."""
    assert LEVEL_NAMES == ("PATIENT", "STUDY", "SERIES", "IMAGE")
    assert [s.resource for s in LEVEL_SPELLINGS.values()] == ["patients", "studies", "series", "instances"]
    assert [s.noun for s in LEVEL_SPELLINGS.values()] == ["patient", "study", "series", "instance"]
    assert [s.unique_key for s in LEVEL_SPELLINGS.values()] == [
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
    ]
    assert [s.uid_list for s in LEVEL_SPELLINGS.values()] == [False, True, True, True]
    assert all(level is s.level for level, s in LEVEL_SPELLINGS.items())


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("IMAGE", Level.IMAGE),
        ("image", Level.IMAGE),
        ("instance", Level.IMAGE),
        ("instances", Level.IMAGE),
        (" Study ", Level.STUDY),
        ("studies", Level.STUDY),
        ("series", Level.SERIES),
        ("SERIES", Level.SERIES),
        ("patients", Level.PATIENT),
        ("PATIENT", Level.PATIENT),
        ("INSTANCEs ", Level.IMAGE),
        ("", None),
        ("frame", None),
        ("stud", None),
    ],
)
def test_parse_level(text: str, level: Level | None) -> None:
    assert parse_level(text) is level


def test_models() -> None:
    assert PATIENT_ROOT.levels == tuple(Level)
    assert STUDY_ROOT.levels == (Level.STUDY, Level.SERIES, Level.IMAGE)
    assert PATIENT_STUDY_ONLY.levels == (Level.PATIENT, Level.STUDY)
    assert [m.key for m in INFORMATION_MODELS] == ["patient", "study", "patient-study"]
    assert [m.find_sop_class for m in INFORMATION_MODELS] == [
        uids.PATIENT_ROOT_FIND,
        uids.STUDY_ROOT_FIND,
        uids.PATIENT_STUDY_ONLY_FIND,
    ]
    assert RETRIEVE_MODELS == {"PATIENT": PATIENT_ROOT, "STUDY": STUDY_ROOT, "PATIENT/STUDY": PATIENT_STUDY_ONLY}
    # PS3.4 Table C.5-3 (retired): the Patient/Study Only MOVE and GET classes, served, never proposed
    assert (PATIENT_STUDY_ONLY.move_sop_class, PATIENT_STUDY_ONLY.get_sop_class) == (
        "1.2.840.10008.5.1.4.1.2.3.2",
        "1.2.840.10008.5.1.4.1.2.3.3",
    )
    assert PATIENT_STUDY_ONLY.retired and not PATIENT_ROOT.retired and not STUDY_ROOT.retired


def test_the_tables_built_from_them_say_what_they_said_before() -> None:
    """The seven former definitions, now derived: the same contents as the literals they were."""
    from minipacs.cli.retrieve_common import LEVEL_OF_KEY
    from minipacs.core import delete, retrieve
    from minipacs.core.query_model import LEVELS as QUERY_LEVELS
    from minipacs.services import find_scu, qr_find, qr_retrieve, retrieve_scu
    from minipacs.web import rest, rest_nodes

    assert {lv: t.unique_key for lv, t in QUERY_LEVELS.items()} == {
        Level.PATIENT: "PatientID",
        Level.STUDY: "StudyInstanceUID",
        Level.SERIES: "SeriesInstanceUID",
        Level.IMAGE: "SOPInstanceUID",
    }
    from minipacs.index.entities import ENTITIES

    assert [ENTITIES[t.entity].table.name for t in QUERY_LEVELS.values()] == [
        "patients",
        "studies",
        "series",
        "instances",
    ]
    assert {k: (v.name, v.unique_key, v.uid_list) for k, v in retrieve.LEVELS.items()} == {
        "PATIENT": ("PATIENT", "PatientID", False),
        "STUDY": ("STUDY", "StudyInstanceUID", True),
        "SERIES": ("SERIES", "SeriesInstanceUID", True),
        "IMAGE": ("IMAGE", "SOPInstanceUID", True),
    }
    assert [ENTITIES[v.entity].unique_column for v in retrieve.LEVELS.values()] == [
        "patient_id",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
    ]
    assert retrieve.MODELS == {
        "PATIENT": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
        "STUDY": ("STUDY", "SERIES", "IMAGE"),
        "PATIENT/STUDY": ("PATIENT", "STUDY"),  # the retired Patient/Study Only model (PS3.4 C.6.3)
    }
    assert {k: ENTITIES[v].unique_column for k, v in delete.LEVELS.items()} == {
        "patient": "patient_id",
        "study": "study_instance_uid",
        "series": "series_instance_uid",
        "instance": "sop_instance_uid",
    }
    assert rest.LEVELS == {
        "patients": (Level.PATIENT, "PatientID", "PATIENT", "patient"),
        "studies": (Level.STUDY, "StudyInstanceUID", "STUDY", "study"),
        "series": (Level.SERIES, "SeriesInstanceUID", "SERIES", "series"),
        "instances": (Level.IMAGE, "SOPInstanceUID", "IMAGE", "instance"),
    }
    assert {k: (v.qr_level, v.unique_key, v.model) for k, v in rest_nodes.LEVELS.items()} == {
        "patient": ("PATIENT", "PatientID", "PATIENT"),
        "study": ("STUDY", "StudyInstanceUID", "STUDY"),
        "series": ("SERIES", "SeriesInstanceUID", "STUDY"),
        "instance": ("IMAGE", "SOPInstanceUID", "STUDY"),
    }
    assert find_scu.MODELS == {
        "patient": (uids.PATIENT_ROOT_FIND, "PATIENT"),
        "study": (uids.STUDY_ROOT_FIND, "STUDY"),
        "patient-study": (uids.PATIENT_STUDY_ONLY_FIND, "PATIENT"),
    }
    assert set(find_scu.DEFAULT_KEYS) == set(LEVEL_NAMES)
    assert qr_find.FIND_MODELS == {
        uids.PATIENT_ROOT_FIND: PATIENT_ROOT,
        uids.STUDY_ROOT_FIND: STUDY_ROOT,
        uids.PATIENT_STUDY_ONLY_FIND: PATIENT_STUDY_ONLY,
    }
    assert qr_retrieve.MOVE_MODELS == {
        uids.PATIENT_ROOT_MOVE: "PATIENT",
        uids.STUDY_ROOT_MOVE: "STUDY",
        uids.PATIENT_STUDY_ONLY_MOVE: "PATIENT/STUDY",  # served (retired), not proposed: below
    }
    assert qr_retrieve.GET_MODELS == {
        uids.PATIENT_ROOT_GET: "PATIENT",
        uids.STUDY_ROOT_GET: "STUDY",
        uids.PATIENT_STUDY_ONLY_GET: "PATIENT/STUDY",
    }
    assert retrieve_scu.MOVE_MODEL_UIDS == {"PATIENT": uids.PATIENT_ROOT_MOVE, "STUDY": uids.STUDY_ROOT_MOVE}
    assert retrieve_scu.GET_MODEL_UIDS == {"PATIENT": uids.PATIENT_ROOT_GET, "STUDY": uids.STUDY_ROOT_GET}
    from minipacs.core.changes import DELETED_LEVELS
    from minipacs.web.dicomweb import PATH_KEYS

    assert PATH_KEYS == {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
    assert DELETED_LEVELS == {"patient", "study", "series", "instance"}
    assert LEVEL_OF_KEY == (
        ("SOPInstanceUID", "IMAGE"),
        ("SeriesInstanceUID", "SERIES"),
        ("StudyInstanceUID", "STUDY"),
        ("PatientID", "PATIENT"),
    )
