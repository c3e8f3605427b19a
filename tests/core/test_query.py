"""The query engine: levels, models, hierarchical rules, return and computed keys, streaming.

Runs on SQLite and PostgreSQL (the ``qa`` fixture of tests/index/query_fixture.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from minipacs.core import query as q
from minipacs.core.errors import IdentifierMismatch
from minipacs.core.query import prepare_query, run_query
from minipacs.dicom.levels import PATIENT_ROOT, PATIENT_STUDY_ONLY, STUDY_ROOT, Level
from tests.index.query_fixture import STUDIES, STUDY_UIDS, QueryArchive, qa  # noqa: F401 - fixture

N_STUDIES = len(STUDIES)


def test_study_level_answers_every_requested_key(qa: QueryArchive) -> None:
    found = qa.find(
        {
            "AccessionNumber": "A1",
            "PatientName": "",
            "PatientID": "",
            "StudyDate": "",
            "StudyTime": "",
            "StudyDescription": "",
            "ReferringPhysicianName": "",
            "InstitutionName": "",
            "ModalitiesInStudy": "",
            "SOPClassesInStudy": "",
            "NumberOfStudyRelatedSeries": "",
            "NumberOfStudyRelatedInstances": "",
            "InstanceAvailability": "",
            "BodyPartExamined": "",
        }
    )
    assert len(found) == 1
    m = found[0]
    assert m.QueryRetrieveLevel == "STUDY"
    assert str(m.PatientName) == "Doe^John" and m.PatientID == "P1"
    assert m.StudyDate == "20240115" and m.StudyTime == "101530"
    assert m.StudyDescription == "CT HEAD"
    assert m.StudyInstanceUID == STUDY_UIDS["A1"]  # the unique key, even unasked
    assert list(m.ModalitiesInStudy) == ["CT", "SR"]
    assert m.SOPClassesInStudy == "1.2.840.10008.5.1.4.1.1.2"
    assert int(m.NumberOfStudyRelatedSeries) == 2
    assert int(m.NumberOfStudyRelatedInstances) == 4
    assert m.InstanceAvailability == "ONLINE"
    assert "InstitutionName" in m and m.InstitutionName in (None, "")  # not in the file: empty
    assert "BodyPartExamined" in m and not m.BodyPartExamined  # series key at study level: empty


def test_patient_root_patient_level(qa: QueryArchive) -> None:
    found = qa.find(
        {
            "PatientID": "P1",
            "PatientName": "",
            "NumberOfPatientRelatedStudies": "",
            "NumberOfPatientRelatedSeries": "",
            "NumberOfPatientRelatedInstances": "",
        },
        level=Level.PATIENT,
        model=PATIENT_ROOT,
    )
    assert len(found) == 1
    m = found[0]
    assert (
        int(m.NumberOfPatientRelatedStudies),
        int(m.NumberOfPatientRelatedSeries),
        int(m.NumberOfPatientRelatedInstances),
    ) == (1, 2, 4)


#: (PatientID, study number) -> series, each of instances: patient PX has two studies (2 + 1 series,
#: 1 + 1 + 3 instances), PY one (1 series of 1 instance).
PATIENT_COUNTS_STUDIES: dict[tuple[str, int], list[int]] = {("PX", 1): [1, 1], ("PX", 2): [3], ("PY", 1): [1]}
PATIENT_COUNTS = ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances")


def test_patient_counts_at_the_study_level_of_the_study_root(with_archive: Callable[..., Any], tmp_path: Path) -> None:
    """PS3.4 C.6.2.1.2 (Table C.6-5): in the Study Root model the Study level carries the patient's keys,
    Number of Patient Related Studies/Series/Instances among them: each study answers its patient's
    counts (of all the patient's studies, not only those the query matches), as the Patient level of the
    Patient Root model does. They were counted over a cartesian product (9 studies for 1, and SQLAlchemy's
    cartesian-product SAWarning, an error under the test settings)."""
    from pydicom.uid import generate_uid

    from minipacs.core.archive import Archive
    from minipacs.core.model import Origin
    from tests.dicomgen import write_ct

    files = tmp_path / "files"
    for (pid, n), series in PATIENT_COUNTS_STUDIES.items():
        study = generate_uid()
        for s, instances in enumerate(series):
            serie = generate_uid()
            for _i in range(instances):
                write_ct(
                    files / f"{generate_uid()}.dcm",
                    study_uid=study,
                    series_uid=serie,
                    sop_uid=generate_uid(),
                    patient_id=pid,
                    AccessionNumber=f"{pid}-{n}",
                    SeriesNumber=s + 1,
                )

    def ident(level: str, **keys: str) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for keyword in ("AccessionNumber", "PatientID", *PATIENT_COUNTS):
            setattr(ds, keyword, "")
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        if level == "PATIENT":
            del ds.AccessionNumber
        return ds

    async def body(archive: Archive) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        for path in sorted(files.iterdir()):
            await archive.import_file(path, Origin("import", "", "", "", 0))

        async def answers(ds: Dataset, model: Any) -> list[Any]:
            found = [m async for m in q.query(archive, None, ds, model=model)]
            return sorted(
                (str(m.get("AccessionNumber", m.PatientID)), *(int(m[k].value) for k in PATIENT_COUNTS)) for m in found
            )

        return (
            await answers(ident("STUDY"), STUDY_ROOT),
            await answers(ident("STUDY", AccessionNumber="PX-2"), STUDY_ROOT),  # PX-1 is not matched, still counted
            await answers(ident("PATIENT"), PATIENT_ROOT),
            # the Patient Root's STUDY level answers them too (keys of the level above, C.4.1.2.1): they
            # were answered empty there while the Study Root counted them
            await answers(ident("STUDY", PatientID="PX"), PATIENT_ROOT),
        )

    every, one, patients, patient_root = with_archive(body, fsync=False)
    assert every == [("PX-1", 2, 3, 5), ("PX-2", 2, 3, 5), ("PY-1", 1, 1, 1)]
    assert one == [("PX-2", 2, 3, 5)]
    assert patients == [("PX", 2, 3, 5), ("PY", 1, 1, 1)]
    assert patient_root == [("PX-1", 2, 3, 5), ("PX-2", 2, 3, 5)]


def test_patient_root_study_level_needs_patient_id(qa: QueryArchive) -> None:
    with pytest.raises(IdentifierMismatch, match="PatientID"):
        qa.find({"StudyDate": ""}, model=PATIENT_ROOT)
    found = qa.find({"PatientID": "P2", "StudyInstanceUID": ""}, model=PATIENT_ROOT)
    assert [m.StudyInstanceUID for m in found] == [STUDY_UIDS["A_2"]]


def test_series_level(qa: QueryArchive) -> None:
    found = qa.find(
        {
            "StudyInstanceUID": STUDY_UIDS["A%3"],
            "Modality": "",
            "SeriesNumber": "",
            "NumberOfSeriesRelatedInstances": "",
            "SeriesInstanceUID": "",
        },
        level=Level.SERIES,
    )
    assert sorted((str(m.Modality), int(m.SeriesNumber), int(m.NumberOfSeriesRelatedInstances)) for m in found) == [
        ("CT", 1, 2),
        ("SR", 2, 2),
    ]
    assert all(m.QueryRetrieveLevel == "SERIES" for m in found)


def test_image_level(qa: QueryArchive) -> None:
    uid = STUDY_UIDS["A'4"]
    found = qa.find(
        {
            "StudyInstanceUID": uid,
            "SeriesInstanceUID": f"{uid}.1",
            "InstanceNumber": "2",
            "SOPInstanceUID": "",
            "Rows": None,
            "SOPClassUID": "",
        },
        level=Level.IMAGE,
    )
    assert [m.SOPInstanceUID for m in found] == [f"{uid}.1.2"]
    assert found[0].Rows == 64  # US value answered from the index


def test_uid_list_above_the_query_level_is_relational_only(qa: QueryArchive) -> None:
    """PS3.4 C.4.1.2.1: a hierarchical query holds "a single value in the Unique Key Attribute for each
    level above the Query/Retrieve level" (List of UID Matching at the query level only), as C-MOVE's
    does (C.4.2.2.1, core/retrieve.py refuses a list there). A relational query takes any key at any
    level with any C.2.2.2 matching (C.4.1.3.2.1), a UID list above the level too."""
    studies = f"{STUDY_UIDS['A1']}\\{STUDY_UIDS['A_2']}"
    keys = {"StudyInstanceUID": studies, "SeriesInstanceUID": "", "Modality": ""}
    with pytest.raises(IdentifierMismatch, match=r"single value in StudyInstanceUID.*C\.4\.1\.2\.1.*relational"):
        qa.find(keys, level=Level.SERIES)
    found = qa.find(keys, level=Level.SERIES, relational=True)
    assert sorted(str(m.Modality) for m in found) == ["CT", "MR", "SR", "SR"]
    # at the query level itself a list is List of UID Matching (C.2.2.2.2), hierarchical or not
    assert len(qa.find({"StudyInstanceUID": studies})) == 2


def test_series_level_without_the_study_uid_is_refused(qa: QueryArchive) -> None:
    with pytest.raises(IdentifierMismatch, match="StudyInstanceUID"):
        qa.find({"Modality": "CT"}, level=Level.SERIES)


def test_relational_query_needs_no_upper_unique_keys(qa: QueryArchive) -> None:
    found = qa.find({"Modality": "MR", "PatientName": "doe*"}, level=Level.SERIES, relational=True)
    assert [str(m.Modality) for m in found] == ["MR"]
    assert str(found[0].PatientName) == "DOE^JANE"


def test_patient_study_only_model(qa: QueryArchive) -> None:
    found = qa.find({"PatientName": "smith*", "PatientID": ""}, level=Level.PATIENT, model=PATIENT_STUDY_ONLY)
    assert [m.PatientID for m in found] == ["P4"]
    with pytest.raises(IdentifierMismatch):
        qa.find({"StudyInstanceUID": "1"}, level=Level.SERIES, model=PATIENT_STUDY_ONLY)


LEVEL_ERRORS: list[tuple[str, Any]] = [
    ("missing", None),
    ("empty", ""),
    ("unknown", "FOO"),
    ("not in study root", "PATIENT"),
]


@pytest.mark.parametrize("value", [v for _n, v in LEVEL_ERRORS], ids=[n for n, _v in LEVEL_ERRORS])
def test_bad_query_retrieve_level(value: Any) -> None:
    ds = Dataset()
    if value is not None:
        ds.QueryRetrieveLevel = value
    ds.PatientName = ""
    with pytest.raises(IdentifierMismatch, match="QueryRetrieveLevel"):
        prepare_query(ds, STUDY_ROOT)


def test_keys_below_the_level_are_answered_empty_and_reported() -> None:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.Modality = "CT"
    ds.SOPInstanceUID = ""
    prepared = prepare_query(ds, STUDY_ROOT)
    assert prepared.unsupported == ("Modality",)
    assert not prepared.sql_keys


@pytest.mark.parametrize(
    ("value", "matches"),
    [("", N_STUDIES), ("ONLINE", N_STUDIES), ("ON*", N_STUDIES), ("OFFLINE", 0), ("NEARLINE\\OFFLINE", 0)],
)
def test_instance_availability_is_matched_against_what_is_answered(qa: QueryArchive, value: str, matches: int) -> None:
    """PS3.4 C.2.2.2 / C.4.1.1.3.2: every stored instance is ONLINE, so InstanceAvailability=OFFLINE
    matches nothing (it answered every study, each saying ONLINE)."""
    found = qa.find({"AccessionNumber": "", "InstanceAvailability": value})
    assert len(found) == matches
    assert all(m.InstanceAvailability == "ONLINE" for m in found)


@pytest.mark.parametrize(
    ("level", "keys", "reported"),
    [
        (Level.SERIES, {"StudyInstanceUID": "1.2.3", "ModalitiesInStudy": "MR"}, ("ModalitiesInStudy",)),
        (
            Level.SERIES,
            {"StudyInstanceUID": "1.2.3", "NumberOfStudyRelatedInstances": "4"},
            ("NumberOfStudyRelatedInstances",),
        ),
        (Level.SERIES, {"StudyInstanceUID": "1.2.3", "ModalitiesInStudy": ""}, ()),
        (
            Level.IMAGE,
            {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "NumberOfSeriesRelatedInstances": "2"},
            ("NumberOfSeriesRelatedInstances",),
        ),
    ],
)
def test_a_value_in_a_computed_key_of_an_upper_level_is_reported_not_dropped(
    level: Level, keys: dict[str, str], reported: tuple[str, ...]
) -> None:
    """A count or list of an upper level is answered below it, not matched there: a value in it says so
    (0xFF01, C.4.1.1.4) instead of answering Success for a filter that was dropped."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    prepared = prepare_query(ds, STUDY_ROOT)
    assert prepared.unsupported == reported
    assert all(key.is_universal for key, _comp in prepared.computed_keys)


def test_counts_and_lists_of_the_levels_above_are_answered(qa: QueryArchive) -> None:
    """C.4.1.2.1: keys of the levels above the query level are answered, the computed ones too: each series
    with its study's ModalitiesInStudy and counts and its patient's, each instance with its series' count.
    They were answered empty, while StudyDate or PatientName, keys of the same levels, were answered."""
    upper = ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "NumberOfPatientRelatedStudies")
    series = qa.find(
        {
            "StudyInstanceUID": STUDY_UIDS["A1"],
            "SeriesInstanceUID": "",
            "ModalitiesInStudy": "",
            **dict.fromkeys(upper, ""),
        },
        level=Level.SERIES,
    )
    assert len(series) == 2
    for m in series:
        assert list(m.ModalitiesInStudy) == ["CT", "SR"]
        assert [int(m[k].value) for k in upper] == [2, 4, 1]
    uid = STUDY_UIDS["A1"]
    one = qa.find(
        {
            "PatientID": "P1",
            "StudyInstanceUID": uid,
            "SeriesInstanceUID": f"{uid}.1",
            "SOPInstanceUID": "",
            "NumberOfSeriesRelatedInstances": "",
            "NumberOfPatientRelatedInstances": "",
        },
        level=Level.IMAGE,
        model=PATIENT_ROOT,
    )
    assert [(int(m.NumberOfSeriesRelatedInstances), int(m.NumberOfPatientRelatedInstances)) for m in one] == [
        (2, 4)
    ] * 2


def test_limit(qa: QueryArchive) -> None:
    assert len(qa.find({"AccessionNumber": ""}, limit=2)) == 2
    assert len(qa.find({"AccessionNumber": ""})) == N_STUDIES


def test_results_stream_page_by_page(qa: QueryArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first match is out after ONE index read of FIRST_PAGE rows, not after all of them."""
    monkeypatch.setattr(q, "FIRST_PAGE", 2)
    monkeypatch.setattr(q, "PAGE", 2)
    reads: list[int] = []

    class Counting:
        blobs = qa.archive.blobs

        async def read(self, fn: Any) -> Any:
            reads.append(1)
            return await qa.archive.read(fn)

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.AccessionNumber = ""

    async def first_then_rest() -> tuple[int, int]:
        stream = run_query(Counting(), prepare_query(ds, STUDY_ROOT))
        await stream.__anext__()
        after_first = len(reads)
        rest = [m async for m in stream]
        return after_first, len(rest) + 1

    after_first, total = qa.runner.run(first_then_rest())
    assert after_first == 1
    assert total == N_STUDIES
    assert len(reads) == 3  # 2 + 2 + 1 rows


def test_non_ascii_identifier_values_match(qa: QueryArchive) -> None:
    """Values arrive decoded with the identifier's SpecificCharacterSet (here from raw ISO_IR 100 bytes)."""
    from io import BytesIO

    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "MÜLLER*"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    assert "Ü".encode("latin-1") in buffer.getvalue()
    raw = read_dataset(BytesIO(buffer.getvalue()), True, True)

    async def collect() -> list[Dataset]:
        return [m async for m in q.query(qa.archive, None, raw, model=STUDY_ROOT)]

    found = qa.runner.run(collect())
    assert [str(m.PatientName) for m in found] == ["Müller^Jürgen"]


def test_every_computed_key_has_its_sql_and_no_more() -> None:
    """core/query_model.py COMPUTED_KEYS (levels, VRs) and index/query_sql.py AGGREGATES (SQL) name the
    same keys, and a key is matchable exactly when the index has a column to match it on."""
    from minipacs.core.query_model import COMPUTED_KEYS
    from minipacs.index.query_sql import AGGREGATES

    assert set(COMPUTED_KEYS) == set(AGGREGATES)
    assert {k for k, c in COMPUTED_KEYS.items() if c.matchable} == {
        k for k, a in AGGREGATES.items() if a.match_column is not None
    }


def test_each_level_answers_its_unique_key_from_the_entitys_unique_column() -> None:
    from minipacs.core.query_model import INDEXED_KEYS, LEVELS
    from minipacs.index.entities import ENTITIES

    for level, spec in LEVELS.items():
        assert INDEXED_KEYS[spec.unique_key].value_column == ENTITIES[spec.entity].unique_column, level


def test_a_value_the_index_refuses_is_an_invalid_key_value() -> None:
    """index/matching.py raises its own InvalidMatchValue; the core hands out InvalidKeyValue (0xC001, HTTP 400)."""
    from minipacs.core.errors import InvalidKeyValue

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyDate = "20241231-20240101"
    with pytest.raises(InvalidKeyValue, match="ends before it starts"):
        prepare_query(ds, STUDY_ROOT)


def test_a_page_built_slot_by_slot_is_what_row_by_row_gives() -> None:
    """Issue 11: a page with no stored-file keys is built down each slot (_build_rows); it must give
    the rows _row_builder gives one by one, for every kind of slot, and the joined computed values
    (shared by many matches of a page) as they were joined before."""
    from pydicom.tag import BaseTag

    from minipacs.core.query_model import COMPUTED_KEYS

    slots = [
        q._Slot(BaseTag(0x00080020), "DA", q._Source.INDEX, "k00080020"),
        q._Slot(BaseTag(0x00080052), "CS", q._Source.LEVEL, "STUDY"),
        q._Slot(BaseTag(0x00080054), "AE", q._Source.CONSTANT, "ARCHIVE"),
        q._Slot(BaseTag(0x00080061), "CS", q._Source.COMPUTED, "ModalitiesInStudy"),
        q._Slot(BaseTag(0x00081030), "LO", q._Source.EMPTY, ""),
        q._Slot(BaseTag(0x00201208), "IS", q._Source.COMPUTED, "NumberOfStudyRelatedInstances"),
        q._Slot(BaseTag(0x0020000D), "UI", q._Source.INDEX, "unique_key"),
    ]
    position = {"pk": 0, "k00080020": 1, "unique_key": 2, "agg_ModalitiesInStudy": 3}
    rows: list[tuple[Any, ...]] = [
        (11, "20240101", "1.2.11", ["SR", "CT", ""]),
        (12, None, "1.2.12", None),
        (13, 20240103, "1.2.13", ["CT", "SR"]),
        (14, "", "1.2.14", ["SR", "CT", ""]),
        (15, "20240105", "1.2.15", []),
    ]
    pks = [row[0] for row in rows]
    modalities = q._in_page_values(rows, pks, 3, COMPUTED_KEYS["ModalitiesInStudy"])
    assert modalities == {11: "CT\\SR", 13: "CT\\SR", 14: "CT\\SR"}
    computed = {"ModalitiesInStudy": modalities, "NumberOfStudyRelatedInstances": {11: "4", 14: "2"}}
    fill = q._row_builder(slots, position, computed)
    expected = [fill(row, pk, None) for pk, row in zip(pks, rows, strict=True)]
    assert q._build_rows(slots, position, computed, rows, pks) == expected
    assert expected[1] == (None, "STUDY", "ARCHIVE", "", None, "0", "1.2.12")
    assert expected[2][0] == "20240103"  # not text in the index: its string form
    assert q._build_rows(slots, position, computed, [], []) == []


def _combined(qa: QueryArchive, keys: dict[str, str], level: Level = Level.STUDY, combined: bool = True) -> set[str]:
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    ds.AccessionNumber = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    prepared = prepare_query(ds, STUDY_ROOT, combined_date_time=combined)

    async def collect() -> list[Dataset]:
        return [m async for m in run_query(qa.archive, prepared)]

    return {str(m.AccessionNumber) for m in qa.runner.run(collect())}


@pytest.mark.parametrize(
    ("date", "time", "combined", "expected"),
    [
        # January 15 10:00 until February 1 13:00, not 10:00-13:00 on each day: A_2 (February 1 08:30) too
        ("20240115-20240201", "1000-1300", True, {"A1", "A'4", "A_2"}),
        ("20240115-20240201", "1000-1300", False, {"A1", "A'4"}),
        # December 31 20:00 until January 15 11:00: across midnight, as one range only
        ("20231231-20240115", "2000-1100", True, {"A%3", "B;5", "A1"}),
        ("20240115-", "1100-", True, {"A'4", "A_2"}),  # from January 15 11:00: A1 (10:15:30) is before
        ("-20240110", "-0000", True, {"A%3", "B;5"}),  # until January 10 00:00:59.999999
        ("20240115", "1000-1300", True, {"A1"}),  # a single date: each on its own, as without it
    ],
)
def test_combined_date_time_matching_when_negotiated(
    qa: QueryArchive, date: str, time: str, combined: bool, expected: set[str]
) -> None:
    """PS3.4 C.2.2.2.5 with combined datetime matching (C.5.1.1 byte 2): a StudyDate range and a StudyTime
    range of the same form are one range of moments, matched in SQL on the date and time columns."""
    assert _combined(qa, {"StudyDate": date, "StudyTime": time}, combined=combined) == expected


def test_combined_date_time_with_a_time_the_index_does_not_hold(qa: QueryArchive) -> None:
    """SeriesDate is in the index, SeriesTime is not: the pair is matched on the stored file, where a
    date without a time is the whole day (each series here: January 31 2024, no SeriesTime)."""
    keys = {"StudyInstanceUID": STUDY_UIDS["A1"], "SeriesInstanceUID": "", "SeriesTime": "2300-0100"}
    assert _combined(qa, {**keys, "SeriesDate": "20240130-20240131"}, Level.SERIES) == {"A1"}
    assert not _combined(qa, {**keys, "SeriesDate": "20240129-20240130"}, Level.SERIES)
    assert _combined(qa, {**keys, "SeriesDate": "20240201-20240202"}, Level.SERIES) == set()
