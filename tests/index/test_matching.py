"""PS3.4 C.2.2.2 matching: one test per row, each on SQLite and PostgreSQL.

The archive (tests/index/query_fixture.py) holds five studies keyed by
AccessionNumber: A1, A_2, A%3, A'4, B;5 (metacharacters on purpose).
"""

from __future__ import annotations

from typing import Any

import pytest

from minipacs.core.errors import InvalidKeyValue
from minipacs.dicom.levels import Level
from minipacs.index.errors import InvalidMatchValue
from minipacs.index.matching import (
    UNIVERSAL,
    Condition,
    Matching,
    classify,
    combined_date_time,
    glob_pattern,
    like_pattern,
    python_matches,
)
from tests.index.query_fixture import STUDY_UIDS, QueryArchive, qa  # noqa: F401 - fixture

ALL = {"A1", "A_2", "A%3", "A'4", "B;5"}

# (case, keys, expected AccessionNumbers) — PS3.4 C.2.2.2
CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    # C.2.2.2.3 universal matching
    ("universal: empty value", {"PatientName": ""}, ALL),
    ("universal: a lone *", {"PatientName": "*"}, ALL),
    ("universal: 10,000 *", {"PatientName": "*" * 10000}, ALL),
    ("universal: * on a date", {"StudyDate": "*"}, ALL),
    # C.2.2.2.1 single value matching
    ("single: PatientID exact", {"PatientID": "P1"}, {"A1"}),
    ("single: PatientID is case-sensitive", {"PatientID": "p1"}, {"B;5"}),
    ("single: AccessionNumber with _", {"AccessionNumber": "A_2"}, {"A_2"}),
    ("single: AccessionNumber with %", {"AccessionNumber": "A%3"}, {"A%3"}),
    ("single: AccessionNumber with '", {"AccessionNumber": "A'4"}, {"A'4"}),
    ("single: AccessionNumber with ;", {"AccessionNumber": "B;5"}, {"B;5"}),
    ("single: SQL % is no wildcard", {"AccessionNumber": "%"}, set()),
    ("single: case-sensitive text", {"AccessionNumber": "a1"}, set()),
    ("single: SQL injection text", {"AccessionNumber": "x' OR '1'='1"}, set()),
    ("single: person name, other case", {"PatientName": "doe^john"}, {"A1"}),
    ("single: person name, ISO_IR 100 letters in other case", {"PatientName": "MÜLLER^JÜRGEN"}, {"A%3"}),
    ("single: person name with '", {"PatientName": "o'brien^sean"}, {"B;5"}),
    ("single: date", {"StudyDate": "20240115"}, {"A1"}),
    ("single: date, old dotted form", {"StudyDate": "2024.01.15"}, {"A1"}),
    ("single: time with reduced precision (hour)", {"StudyTime": "10"}, {"A1"}),
    ("single: time, full", {"StudyTime": "083000"}, {"A_2"}),
    ("single: UID", {"StudyInstanceUID": STUDY_UIDS["A'4"]}, {"A'4"}),
    ("single: unknown UID", {"StudyInstanceUID": "1.2.3.999"}, set()),
    # C.2.2.2.2 list of UID matching
    ("UID list", {"StudyInstanceUID": [STUDY_UIDS["A1"], STUDY_UIDS["A%3"]]}, {"A1", "A%3"}),
    ("UID list with an unknown UID", {"StudyInstanceUID": [STUDY_UIDS["B;5"], "1.2.3.4"]}, {"B;5"}),
    # an empty value in a list names nothing (it matched every study: read as universal matching)
    ("UID list with an empty value", {"StudyInstanceUID": [STUDY_UIDS["A1"], ""]}, {"A1"}),
    ("UID list with empty values", {"StudyInstanceUID": ["", STUDY_UIDS["A1"], "", STUDY_UIDS["A'4"]]}, {"A1", "A'4"}),
    ("multiple values with an empty one", {"ModalitiesInStudy": ["CR", ""]}, {"A'4"}),
    # C.2.2.2.4 wildcard matching
    ("wildcard: name prefix, any case", {"PatientName": "doe*"}, {"A1", "A_2"}),
    ("wildcard: ? in a name", {"PatientName": "?oe^j*"}, {"A1", "A_2"}),
    ("wildcard: non-ASCII prefix", {"PatientName": "müller*"}, {"A%3"}),
    ("wildcard: _ is literal", {"AccessionNumber": "A_*"}, {"A_2"}),
    ("wildcard: % is literal", {"AccessionNumber": "A%*"}, {"A%3"}),
    ("wildcard: ' is literal", {"AccessionNumber": "A'*"}, {"A'4"}),
    ("wildcard: ? is one character", {"AccessionNumber": "A?"}, {"A1"}),
    ("wildcard: inner *", {"StudyDescription": "CT*D"}, {"A1"}),
    ("wildcard: text is case-sensitive", {"StudyDescription": "ct*"}, set()),
    ("wildcard: [ is literal (GLOB)", {"StudyDescription": "CT[*"}, {"B;5"}),
    ("wildcard: many ** collapse", {"StudyDescription": "**CT****"}, {"A1", "A%3", "B;5"}),
    # C.2.2.2.5 range matching
    ("range: dates", {"StudyDate": "20240101-20240131"}, {"A1", "A'4", "B;5"}),
    ("range: open start", {"StudyDate": "-20231231"}, {"A%3"}),
    ("range: open end", {"StudyDate": "20240201-"}, {"A_2"}),
    ("range: times", {"StudyTime": "0800-1100"}, {"A1", "A_2"}),
    ("range: time open end, minute precision", {"StudyTime": "2359-"}, {"A%3"}),
    ("range: time end of hour precision is inclusive", {"StudyTime": "-08"}, {"A_2", "B;5"}),
    ("range: a date range and a name", {"StudyDate": "20240101-", "PatientName": "DOE*"}, {"A1", "A_2"}),
    # multiple values (ModalitiesInStudy, C.6.2.1.2)
    ("ModalitiesInStudy one value", {"ModalitiesInStudy": "MR"}, {"A_2", "B;5"}),
    ("ModalitiesInStudy any of", {"ModalitiesInStudy": ["CT", "CR"]}, {"A1", "A%3", "A'4"}),
    ("ModalitiesInStudy none", {"ModalitiesInStudy": "US"}, set()),
    # keys not in the index: matched on the stored file
    ("stored file: wildcard", {"InstitutionName": "General*"}, {"A_2"}),
    ("stored file: DT range", {"AcquisitionDateTime": "20240115-20240120"}, {"A1"}),
    ("stored file: DT open range", {"AcquisitionDateTime": "202401311200-"}, {"A'4"}),
]


@pytest.mark.parametrize(("keys", "expected"), [(k, e) for _c, k, e in CASES], ids=[c for c, _k, _e in CASES])
def test_matching(qa: QueryArchive, keys: dict[str, Any], expected: set[str]) -> None:
    assert qa.accessions(keys) == expected


def _sequence(code: str | None) -> Any:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.CodeValue = code
    item.CodeMeaning = None
    return Sequence([item])


# C.2.2.2.6 sequence matching
SEQUENCE_CASES = [
    ("sequence: item key matches", "X1", {"A1"}),
    ("sequence: wildcard in an item key", "X*", {"A1", "A%3"}),
    ("sequence: no item matches", "Y", set()),
    ("sequence: universal (empty item)", None, ALL),
]


@pytest.mark.parametrize(
    ("code", "expected"), [(c, e) for _n, c, e in SEQUENCE_CASES], ids=[n for n, _c, _e in SEQUENCE_CASES]
)
def test_sequence_matching(qa: QueryArchive, code: str | None, expected: set[str]) -> None:
    found = qa.find({"AccessionNumber": "", "ProcedureCodeSequence": _sequence(code)})
    assert {str(m.AccessionNumber) for m in found} == expected
    for match in found:
        if match.AccessionNumber in ("A1", "A%3"):
            assert match.ProcedureCodeSequence[0].CodeValue in ("X1", "X3")


def test_sequence_answer_holds_the_matching_items_with_the_requested_attributes(qa: QueryArchive) -> None:
    """PS3.4 C.2.2.2.6: "A sequence of matching Items containing only the requested Attributes is
    returned"; a requested attribute an item lacks is answered empty. A_2 has items Y1 and Y2."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.CodeValue = "Y2"
    item.CodeMeaning = None
    item.CodingSchemeVersion = None
    (match,) = qa.find({"AccessionNumber": "", "ProcedureCodeSequence": Sequence([item])})
    assert match.AccessionNumber == "A_2"
    (answered,) = match.ProcedureCodeSequence
    assert [e.keyword for e in answered] == ["CodeValue", "CodingSchemeVersion", "CodeMeaning"]
    assert (answered.CodeValue, answered.CodeMeaning, answered.CodingSchemeVersion) == ("Y2", "procedure Y2", None)
    # an item of universal keys: every stored item, each with the requested attributes only
    item = Dataset()
    item.CodeValue = None
    found = qa.find({"AccessionNumber": "A_2", "ProcedureCodeSequence": Sequence([item])})
    assert [[e.keyword for e in i] for i in found[0].ProcedureCodeSequence] == [["CodeValue"], ["CodeValue"]]
    assert [i.CodeValue for i in found[0].ProcedureCodeSequence] == ["Y1", "Y2"]
    # an empty item: the entire sequence as stored
    found = qa.find({"AccessionNumber": "A_2", "ProcedureCodeSequence": Sequence([Dataset()])})
    assert [i.CodingSchemeDesignator for i in found[0].ProcedureCodeSequence] == ["LOCAL", "LOCAL"]


def test_timezone_offset_from_utc_is_answered_not_matched(qa: QueryArchive) -> None:
    """PS3.4 C.4.1.1.3.1: Timezone Offset From UTC says how the identifier's times are meant; it is
    no key to match (a -0500 query found nothing stored in +0100). C.4.1.1.3.2: a response has it
    with a value or not at all ("shall not be sent with a zero-length value")."""
    found = {str(m.AccessionNumber): m for m in qa.find({"AccessionNumber": "", "TimezoneOffsetFromUTC": "-0500"})}
    assert set(found) == ALL
    assert found["A'4"].TimezoneOffsetFromUTC == "+0100"
    assert all("TimezoneOffsetFromUTC" not in m for acc, m in found.items() if acc != "A'4")


# Values no match can be made of: a clean refusal (InvalidKeyValue → 0xC001 at the C-FIND edge)
INVALID = [
    ("bad date", {"StudyDate": "2024013"}),
    ("bad date in a range", {"StudyDate": "20240101-2024XX01"}),
    ("range ending before it starts", {"StudyDate": "20240201-20240101"}),
    ("DT range ending before it starts in UTC", {"AcquisitionDateTime": "20240105080000+0000-20240105083000+0100"}),
    ("bad time", {"StudyTime": "2561"}),
    ("value far too long", {"AccessionNumber": "A" * 5000}),
    ("too many UIDs", {"StudyInstanceUID": ["1.2"] * 1001}),
]


@pytest.mark.parametrize("keys", [k for _n, k in INVALID], ids=[n for n, _k in INVALID])
def test_invalid_values_are_refused(qa: QueryArchive, keys: dict[str, Any]) -> None:
    with pytest.raises(InvalidKeyValue):
        qa.find(keys)


# classify(): which matching a value asks for (pure, no index)
CLASSIFY = [
    ("LO", "", UNIVERSAL),
    ("LO", "**", UNIVERSAL),
    ("LO", "abc", Condition(Matching.SINGLE, ("abc",))),
    ("LO", "a**b?", Condition(Matching.WILDCARD, ("a*b?",))),
    ("DA", "20240101", Condition(Matching.SINGLE, ("20240101",))),
    ("DA", "20240101-", Condition(Matching.RANGE, ("20240101", ""))),
    ("DA", "-", UNIVERSAL),
    ("TM", "1000-1100", Condition(Matching.RANGE, ("1000", "1100"))),
    ("DT", "20240101120000-0500", Condition(Matching.SINGLE, ("20240101120000-0500",))),
    ("DT", "2024-2025", Condition(Matching.RANGE, ("2024", "2025"))),
    ("DT", "20240101120000-0500-20240102", Condition(Matching.RANGE, ("20240101120000-0500", "20240102"))),
    # 10:00+0500 is 05:00 UTC, before 09:30 UTC: a range in order once the offsets are counted
    (
        "DT",
        "20240105100000+0500-20240105093000+0000",
        Condition(Matching.RANGE, ("20240105100000+0500", "20240105093000+0000")),
    ),
    (
        "UI",
        "1.2\\1.3",
        Condition(
            Matching.UID_LIST, parts=(Condition(Matching.SINGLE, ("1.2",)), Condition(Matching.SINGLE, ("1.3",)))
        ),
    ),
    ("UI", "1.2\\", Condition(Matching.SINGLE, ("1.2",))),
    ("UI", "\\", UNIVERSAL),
    (
        "CS",
        "CT\\MR",
        Condition(Matching.MULTIPLE, parts=(Condition(Matching.SINGLE, ("CT",)), Condition(Matching.SINGLE, ("MR",)))),
    ),
]


@pytest.mark.parametrize(("vr", "value", "expected"), CLASSIFY, ids=[f"{v}:{x[:20]}" for v, x, _e in CLASSIFY])
def test_classify(vr: str, value: str, expected: Condition) -> None:
    assert classify(vr, value) == expected


# PS3.5 Table 6.2-1: values a key's VR cannot hold, refused (0xC001 at the C-FIND edge, 400 in QIDO-RS)
# rather than answered "no match": numbers that are no numbers, UIDs with wildcards (PS3.4 C.2.2.2.4).
NOT_OF_THE_VR = [
    ("IS", "1A"),
    ("IS", "1*"),
    ("IS", "1.5"),
    ("IS", "1\\x"),
    ("DS", "1,5"),
    ("DS", "?"),
    ("UI", "1.2*"),
    ("UI", "1.2.3\\1.2.?"),
]


@pytest.mark.parametrize(("vr", "value"), NOT_OF_THE_VR, ids=[f"{v}:{x}" for v, x in NOT_OF_THE_VR])
def test_values_the_vr_cannot_hold_are_refused(vr: str, value: str) -> None:
    with pytest.raises(InvalidMatchValue, match=r"SeriesNumber '.*' is not a valid|SeriesNumber '.*': a UID cannot"):
        classify(vr, value, "SeriesNumber")


NUMBERS = [("IS", "12"), ("IS", "-3"), ("IS", "+7"), ("IS", " 4 "), ("DS", "1.5"), ("DS", "-.5e-3"), ("DS", "2.")]


@pytest.mark.parametrize(("vr", "value"), NUMBERS)
def test_numbers_take_single_value_matching(vr: str, value: str) -> None:
    assert classify(vr, value) == Condition(Matching.SINGLE, (value,))


def test_series_number_that_is_no_number_is_refused_by_the_engine(qa: QueryArchive) -> None:
    """C-FIND and QIDO-RS agree: "SeriesNumber=1A" is refused, not answered with no match."""
    with pytest.raises(InvalidKeyValue, match="SeriesNumber '1A' is not a valid IS value"):
        qa.find({"StudyInstanceUID": STUDY_UIDS["A1"], "SeriesInstanceUID": "", "SeriesNumber": b"1A"}, Level.SERIES)
    assert len(qa.find({"StudyInstanceUID": STUDY_UIDS["A1"], "SeriesNumber": "1"}, Level.SERIES)) == 1


def test_time_range_across_midnight_is_refused_saying_so() -> None:
    """PS3.4 C.2.2.2.5.2: "Range matching crossing midnight is not supported" (no combined date-time
    matching is negotiated, C.2.2.2.5.4): 2300-0100 is refused in words that fit an Error Comment."""
    with pytest.raises(InvalidMatchValue) as refused:
        classify("TM", "2300-0100", "StudyTime")
    assert str(refused.value) == "StudyTime range '2300-0100' crosses midnight; send two ranges"
    assert len(str(refused.value)) <= 64


COMBINED = [
    ("20240105-20240107", "1000-1800", ("202401051000", "202401071800")),
    ("20240105-", "1000-", ("202401051000", "")),
    ("-20240107", "-18", ("", "2024010718")),
    ("2024.01.05-2024.01.07", "10:00-18:00", ("202401051000", "202401071800")),  # ACR-NEMA forms
    ("20240105-20240107", "1000-", None),  # not one form: matched each on its own
    ("20240105", "1000-1800", None),
    ("20240105-20240107", "", None),
    ("20240105\\20240106", "1000-1800", None),
]


@pytest.mark.parametrize(("date", "time", "expected"), COMBINED)
def test_combined_date_time(date: str, time: str, expected: tuple[str, str] | None) -> None:
    """PS3.4 C.2.2.2.5.4 and Table K.6-1: a date range and a time range of one form as one DT range."""
    found = combined_date_time(date, time)
    assert (found.values if found else None) == expected


@pytest.mark.parametrize(("date", "time"), [("2024x-20240107", "10-12"), ("20240105-20240105", "1800-1000")])
def test_combined_date_time_refuses_what_names_no_period(date: str, time: str) -> None:
    with pytest.raises(InvalidMatchValue):
        combined_date_time(date, time)


def test_binary_keys_cannot_match() -> None:
    with pytest.raises(InvalidMatchValue):
        classify("US", "512")


PATTERNS = [
    ("a_b%c\\d*e?", "a\\_b\\%c\\\\d%e_", "a_b%c\\d*e?"),
    ("x[y]*", "x[y]%", "x[[]y]*"),
]


@pytest.mark.parametrize(("value", "like", "glob"), PATTERNS)
def test_escaping(value: str, like: str, glob: str) -> None:
    assert like_pattern(value) == like
    assert glob_pattern(value) == glob


PYTHON = [
    (Condition(Matching.SINGLE, ("doe^john",)), "PN", "DOE^JOHN", True),
    (Condition(Matching.WILDCARD, ("D*",)), "LO", "a\\Dx", True),
    (Condition(Matching.WILDCARD, ("D*",)), "LO", "dx", False),
    (Condition(Matching.RANGE, ("20240101", "")), "DA", "20231231", False),
    (Condition(Matching.RANGE, ("", "2024")), "DT", "20241231235959", True),
    # PS3.4 C.2.2.2.5.3 d: a DT's offset from UTC is taken into account: 10:10:10+0100 is 09:10:10 UTC
    (Condition(Matching.RANGE, ("20240105090000+0000", "20240105093000+0000")), "DT", "20240105101010+0100", True),
    (Condition(Matching.RANGE, ("20240105100000+0000", "20240105103000+0000")), "DT", "20240105101010+0100", False),
    (Condition(Matching.RANGE, ("", "20240105091009+0000")), "DT", "20240105101010+0100", False),
    (Condition(Matching.RANGE, ("20240105043000-0500", "")), "DT", "20240105101010+0100", False),
    (Condition(Matching.RANGE, ("20240105040000-0500", "")), "DT", "20240105101010+0100", True),
    (Condition(Matching.SINGLE, ("20240105091010+0000",)), "DT", "20240105101010+0100", True),
    (Condition(Matching.SINGLE, ("20240105101010+0000",)), "DT", "20240105101010+0100", False),
    (Condition(Matching.SINGLE, ("20240105101010",)), "DT", "20240105101010.5", True),
    (Condition(Matching.SINGLE, ("99991231",)), "DT", "99991231120000", True),  # raised OverflowError
    (Condition(Matching.RANGE, ("2024", "")), "DT", "9999", True),
    (Condition(Matching.SINGLE, ("x",)), "LO", None, False),
    (UNIVERSAL, "LO", None, True),
]


@pytest.mark.parametrize(("cond", "vr", "stored", "expected"), PYTHON)
def test_python_matching(cond: Condition, vr: str, stored: str | None, expected: bool) -> None:
    assert python_matches(cond, vr, stored) is expected


def _reference_wildcard(pattern: str, value: str) -> bool:
    """Textbook dynamic programming over (pattern, value) prefixes: slow, obviously right."""
    can = [[False] * (len(value) + 1) for _ in range(len(pattern) + 1)]
    can[0][0] = True
    for i, p in enumerate(pattern, 1):
        can[i][0] = can[i - 1][0] and p == "*"
        for j, v in enumerate(value, 1):
            if p == "*":
                can[i][j] = can[i - 1][j] or can[i][j - 1]
            else:
                can[i][j] = can[i - 1][j - 1] and (p == "?" or p == v)
    return can[len(pattern)][len(value)]


def test_wildcard_match_agrees_with_the_reference_on_every_small_case() -> None:
    """PS3.4 C.2.2.2.4: every pattern over {a, b, *, ?} up to 5 long against every value up to 6."""
    import itertools

    from minipacs.index.matching import wildcard_match

    values = ["".join(v) for n in range(7) for v in itertools.product("ab", repeat=n)]
    checked = 0
    for n in range(6):
        for pattern in map("".join, itertools.product("ab*?", repeat=n)):
            for value in values:
                assert wildcard_match(pattern, value) == _reference_wildcard(pattern, value), (pattern, value)
                checked += 1
    assert checked == 1365 * 127
