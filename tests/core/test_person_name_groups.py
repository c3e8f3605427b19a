"""PS3.4 C.2.2.2.1 / PS3.5 6.2.1: a person name of several component groups
(alphabetic=ideographic=phonetic) is matched component group by component group, as
dcm4chee-arc reads the standard. A site in Japan, Korea or China stores
"Yamada^Tarou=山田^太郎=やまだ^たろう"; a viewer asking for "Yamada^Tarou" (or "山田^太郎")
found nothing, because the key was matched against the whole value. C-FIND on SQLite and on
PostgreSQL, and the Python matcher, agree on every key below."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.model import Origin
from minipacs.core.query import query
from minipacs.dicom.levels import STUDY_ROOT
from minipacs.index.matching import Condition, Matching, name_group_patterns, python_matches
from tests.dicomgen import write_ct
from tests.index.pg import postgres_schema_url

NAMES = {
    "J1": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "C1": "Wang^XiaoDong=王^小東",
    "K1": "Hong^Gildong=洪^吉洞=홍^길동",
    "D1": "Doe^John",
    "E1": "=山田^花子",  # only an ideographic group
}

# key -> the patient IDs it must find
EXPECTED: dict[str, set[str]] = {
    "Yamada^Tarou": {"J1"},  # the alphabetic group alone: was no match
    "yamada^tarou": {"J1"},  # names match case-insensitively here (README)
    "山田^太郎": {"J1"},  # the ideographic group alone
    "やまだ^たろう": {"J1"},  # the phonetic group alone
    "Wang^XiaoDong": {"C1"},
    "王^小東": {"C1"},
    "홍^길동": {"K1"},
    "Doe^John": {"D1"},
    "Yamada^Tarou=山田^太郎=やまだ^たろう": {"J1"},
    "Yamada^Tarou=山田^太郎": {"J1"},
    "=山田^太郎": {"J1"},  # the ideographic group by position
    "==やまだ^たろう": {"J1"},
    "Yamada^Tarou=山田^花子": set(),  # both groups must match
    "=やまだ^たろう": set(),  # the phonetic value in the ideographic position
    "山田^花子": {"E1"},
    "Yamada*": {"J1"},
    "*Tarou": {"J1"},  # a suffix of the alphabetic group: was no match
    "山田*": {"J1", "E1"},
    "*太郎": {"J1"},
    "*吉*": {"K1"},
    "=山田*": {"J1", "E1"},
    "D*": {"D1"},
    "Tarou": set(),  # a component is no group
    "山田": set(),
    "Yamada^Tarou=山田^太郎=やまだ^たろう=": {"J1"},  # a trailing empty group is insignificant
    "a=b=c=d": set(),  # more groups than a name has (three at most): no match, no error
}


def _archive_counts(tmp_path: Path, index_url: str | None) -> dict[str, set[str]]:
    files = []
    for patient_id, name in NAMES.items():
        files.append(
            write_ct(
                tmp_path / f"{patient_id}.dcm",
                patient_id=patient_id,
                patient_name=name,
                SpecificCharacterSet="ISO_IR 192",
            )
        )

    async def scenario() -> dict[str, set[str]]:
        settings = Settings(data_dir=tmp_path / "data", fsync=False, **({"index_url": index_url} if index_url else {}))
        archive = await open_archive(settings)
        try:
            for path in files:
                await archive.import_file(path, Origin("import", "", "", "", 0))
            found: dict[str, set[str]] = {}
            for key in EXPECTED:
                ds = Dataset()
                ds.QueryRetrieveLevel = "STUDY"
                ds.SpecificCharacterSet = "ISO_IR 192"
                ds.PatientID = ""
                with pydicom.config.disable_value_validation():
                    ds.PatientName = key
                found[key] = {str(m.PatientID) async for m in query(archive, None, ds, model=STUDY_ROOT)}
            return found
        finally:
            await archive.close()

    return asyncio.run(scenario())


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
    else:
        with postgres_schema_url() as url:
            yield url


def test_cfind_matches_each_component_group(tmp_path: Path, index_url: str | None) -> None:
    assert _archive_counts(tmp_path, index_url) == EXPECTED


@pytest.mark.parametrize("key", list(EXPECTED))
def test_the_python_matcher_agrees(key: str) -> None:
    kind = Matching.WILDCARD if "*" in key or "?" in key else Matching.SINGLE
    found = {pid for pid, name in NAMES.items() if python_matches(Condition(kind, (key,)), "PN", name)}
    assert found == EXPECTED[key]


def test_an_ascii_key_stays_on_the_names_index() -> None:
    """An ASCII key is looked up in the first group only (equality or a prefix: the index), a key
    with ideographs in every group; each pattern fixes how many "=" the stored name has."""
    assert name_group_patterns("doe^john") == [("doe^john", 0), ("doe^john=*", 1), ("doe^john=*=*", 2)]
    assert name_group_patterns("*mith*") == [("*mith*", 0), ("*mith*=*", 1), ("*mith*=*=*", 2)]
    assert name_group_patterns("*田*") == [("*田*", None)]
    assert name_group_patterns("山田*")[3:] == [("*=山田*", 1), ("*=山田*=*", 2), ("*=*=山田*", 2)]
    assert name_group_patterns("=山田^太郎") == [("*=山田^太郎", 1), ("*=山田^太郎=*", 2)]
    assert name_group_patterns("a=b=c") == [("a=b=c", 2)]


def test_an_ascii_key_does_not_match_a_later_group() -> None:
    """The documented limit of the ASCII rule: an ASCII ideographic or phonetic group is found by
    its position ("=Tarou") or by a key with a character beyond ASCII, not by "Tarou" alone."""
    name = "X^Y=Tarou"
    assert not python_matches(Condition(Matching.SINGLE, ("Tarou",)), "PN", name)
    assert python_matches(Condition(Matching.SINGLE, ("=Tarou",)), "PN", name)
