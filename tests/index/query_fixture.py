"""A small archive for query tests, built once per backend (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.model import Origin
from minipacs.core.query import query
from minipacs.dicom.levels import STUDY_ROOT, InformationModel, Level
from tests.dicomgen import CT_IMAGE_STORAGE, write_ct
from tests.index.pg import postgres_schema_url

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ORIGIN = Origin("import", "", "", "", 0)


def _code(*values: str) -> Sequence:
    items = []
    for value in values:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "LOCAL"
        item.CodeMeaning = f"procedure {value}"
        items.append(item)
    return Sequence(items)


# One study per row, keyed by AccessionNumber: (PatientID, PatientName, StudyDate, StudyTime, Modality, extra)
STUDIES: dict[str, tuple[str, str, str, str, str, dict[str, Any]]] = {
    "A1": (
        "P1",
        "Doe^John",
        "20240115",
        "101530",
        "CT",
        {"StudyDescription": "CT HEAD", "ProcedureCodeSequence": _code("X1"), "AcquisitionDateTime": "20240115101530"},
    ),
    "A_2": (
        "P2",
        "DOE^JANE",
        "20240201",
        "083000",
        "MR",
        {
            "StudyDescription": "MR KNEE",
            "InstitutionName": "General Hospital",
            "ProcedureCodeSequence": _code("Y1", "Y2"),
        },
    ),
    "A%3": (
        "P3",
        "Müller^Jürgen",
        "20231231",
        "235959",
        "CT",
        {"StudyDescription": "CT CHEST", "ProcedureCodeSequence": _code("X3")},
    ),
    "A'4": (
        "P4",
        "Smith^Anna",
        "20240131",
        "120000",
        "CR",
        {"StudyDescription": "XR HAND", "AcquisitionDateTime": "20240131120000", "TimezoneOffsetFromUTC": "+0100"},
    ),
    "B;5": ("p1", "O'Brien^Sean", "20240110", "000000", "MR", {"StudyDescription": "CT[1]"}),
}
STUDY_UIDS = {acc: f"1.2.826.0.1.3680043.10.1.{n}" for n, acc in enumerate(STUDIES, start=1)}
SERIES_PER_STUDY = 2
INSTANCES_PER_SERIES = 2


@dataclass
class QueryArchive:
    archive: Archive
    runner: asyncio.Runner

    def find(
        self,
        keys: dict[str, Any],
        level: Level = Level.STUDY,
        model: InformationModel = STUDY_ROOT,
        relational: bool = False,
        limit: int | None = None,
    ) -> list[Dataset]:
        ds = Dataset()
        ds.QueryRetrieveLevel = level.value
        with pydicom.config.disable_value_validation():
            for keyword, value in keys.items():
                if isinstance(value, bytes):  # as read off the wire, unconverted: a value pydicom would refuse
                    tag = Tag(tag_for_keyword(keyword))
                    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, True, True)
                else:
                    setattr(ds, keyword, value)

        async def collect() -> list[Dataset]:
            return [m async for m in query(self.archive, None, ds, model=model, limit=limit, relational=relational)]

        return self.runner.run(collect())

    def accessions(self, keys: dict[str, Any], **kw: Any) -> set[str]:
        keys = {"AccessionNumber": "", **keys}
        return {str(m.AccessionNumber) for m in self.find(keys, **kw)}


def build(tmp: Path, index_url: str) -> Iterator[QueryArchive]:
    files = tmp / "files"
    for n, (acc, (pid, name, date, time, modality, extra)) in enumerate(STUDIES.items()):
        for s in range(SERIES_PER_STUDY):
            for i in range(INSTANCES_PER_SERIES):
                write_ct(
                    files / f"{n}-{s}-{i}.dcm",
                    study_uid=STUDY_UIDS[acc],
                    series_uid=f"{STUDY_UIDS[acc]}.{s + 1}",
                    sop_uid=f"{STUDY_UIDS[acc]}.{s + 1}.{i + 1}",
                    patient_id=pid,
                    patient_name=name,
                    StudyDate=date,
                    StudyTime=time,
                    AccessionNumber=acc,
                    Modality=modality if s == 0 else "SR",
                    SeriesNumber=s + 1,
                    InstanceNumber=i + 1,
                    SpecificCharacterSet="ISO_IR 100",
                    **extra,
                )
    runner = asyncio.Runner()
    archive = runner.run(open_archive(Settings(data_dir=tmp / "data", index_url=index_url, fsync=False)))
    try:
        for path in sorted(files.iterdir()):
            runner.run(archive.import_file(path, ORIGIN))
        yield QueryArchive(archive, runner)
    finally:
        runner.run(archive.close())
        runner.close()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def qa(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryArchive]:
    tmp = tmp_path_factory.mktemp(f"query-{request.param}")
    if request.param == "sqlite":
        yield from build(tmp, "")
    else:
        with postgres_schema_url() as url:
            yield from build(tmp, url)


__all__ = ["CT_IMAGE_STORAGE", "MR_IMAGE_STORAGE", "QueryArchive", "STUDIES", "STUDY_UIDS", "qa"]
