"""Study Status ID (0032,000A), the computed key of study completion: answered and matched in SQL,
its negation (``absent``) a NOT EXISTS; on SQLite and PostgreSQL.

The archive (tests/index/query_fixture.py) holds five studies keyed by AccessionNumber;
A1 and A'4 are marked complete here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset

from minipacs.core.errors import InvalidQuery
from minipacs.core.query import prepare_query, run_query
from minipacs.dicom.levels import PATIENT_ROOT, STUDY_ROOT, Level
from minipacs.index import worklist_repo
from tests.index.query_fixture import STUDIES, STUDY_UIDS, QueryArchive, qa  # noqa: F401 - fixture

DONE = {"A1", "A'4"}


@pytest.fixture(scope="module")
def marked(qa: QueryArchive) -> Iterator[QueryArchive]:
    for acc in DONE:
        qa.runner.run(
            qa.archive.write(
                lambda conn, acc=acc: worklist_repo.mark_study_complete(conn, STUDY_UIDS[acc], f"{STUDY_UIDS[acc]}.99")
            )
        )
    yield qa


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("COMPLETED", DONE),
        ("COMPL*", DONE),
        ("COMPLETED\\SCHEDULED", DONE),
        ("SCHEDULED", set()),
        ("completed", set()),  # CS matching is case-sensitive
        ("", set(STUDIES)),  # universal
        ("*", set(STUDIES)),
    ],
)
def test_matching(marked: QueryArchive, value: str, expected: set[str]) -> None:
    assert marked.accessions({"StudyStatusID": value}) == expected


def test_answered_completed_or_empty(marked: QueryArchive) -> None:
    found = marked.find({"AccessionNumber": "", "StudyStatusID": ""})
    assert {str(m.AccessionNumber): m.StudyStatusID for m in found} == {
        acc: "COMPLETED" if acc in DONE else None for acc in STUDIES
    }
    assert all(m["StudyStatusID"].VR == "CS" for m in found)


def test_patient_root_study_level_and_other_levels(marked: QueryArchive) -> None:
    found = marked.find({"PatientID": "P4", "AccessionNumber": "", "StudyStatusID": "COMPLETED"}, model=PATIENT_ROOT)
    assert [str(m.AccessionNumber) for m in found] == ["A'4"]
    series = marked.find(
        {"StudyInstanceUID": STUDY_UIDS["A1"], "SeriesInstanceUID": "", "StudyStatusID": ""}, level=Level.SERIES
    )
    assert len(series) == 2  # a study key above the query level is not answered


def _absent(
    qa: QueryArchive, level: Level = Level.STUDY, absent: tuple[str, ...] = ("StudyStatusID",), **keys: Any
) -> set[str]:
    ds = Dataset()
    ds.AccessionNumber = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    prepared = prepare_query(ds, STUDY_ROOT, level=level, relational=True, absent=absent)

    async def collect() -> set[str]:
        return {str(m.AccessionNumber) async for m in run_query(qa.archive, prepared)}

    return qa.runner.run(collect())


def test_absent_is_the_negation(marked: QueryArchive) -> None:
    assert _absent(marked) == set(STUDIES) - DONE
    assert _absent(marked, ModalitiesInStudy="CT") == {"A%3"}
    assert _absent(marked, StudyStatusID="COMPLETED") == set()


@pytest.mark.parametrize("keyword", ["PatientName", "NumberOfStudyRelatedSeries", "NumberOfSeriesRelatedInstances"])
def test_absent_needs_a_matchable_computed_key_of_the_level(marked: QueryArchive, keyword: str) -> None:
    with pytest.raises(InvalidQuery, match="cannot be required empty"):
        _absent(marked, absent=(keyword,))
