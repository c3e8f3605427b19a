"""The one retrieve path: identifier rules (PS3.4 C.4.2.2.1) as a table, and selection from the index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from minipacs.core.archive import Archive
from minipacs.core.model import Origin
from minipacs.core.retrieve import InvalidRetrieveIdentifier, plan, select_instances
from tests.dicomgen import write_ct
from tests.stored_files import instance_path

# (model, level, identifier, expected constraints as (key, values) top down)
VALID = [
    ("STUDY", "STUDY", {"StudyInstanceUID": "1.2"}, [("StudyInstanceUID", ["1.2"])]),
    ("STUDY", "study ", {"StudyInstanceUID": "1.2\\1.3"}, [("StudyInstanceUID", ["1.2", "1.3"])]),
    (
        "STUDY",
        "SERIES",
        {"StudyInstanceUID": "1.2", "SeriesInstanceUID": ["1.4", "1.5"]},
        [("StudyInstanceUID", ["1.2"]), ("SeriesInstanceUID", ["1.4", "1.5"])],
    ),
    ("STUDY", "SERIES", {"SeriesInstanceUID": "1.4"}, [("SeriesInstanceUID", ["1.4"])]),
    ("STUDY", "IMAGE", {"SOPInstanceUID": "1.6", "PatientName": "X*", "Modality": ""}, [("SOPInstanceUID", ["1.6"])]),
    ("PATIENT", "PATIENT", {"PatientID": "P1"}, [("PatientID", ["P1"])]),
    (
        "PATIENT",
        "STUDY",
        {"PatientID": "P1", "StudyInstanceUID": "1.2"},
        [("PatientID", ["P1"]), ("StudyInstanceUID", ["1.2"])],
    ),
    ("STUDY", "STUDY", {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.9"}, [("StudyInstanceUID", ["1.2"])]),
]

INVALID = [
    ("STUDY", "", {"StudyInstanceUID": "1.2"}, "QueryRetrieveLevel"),
    ("STUDY", "PATIENT", {"PatientID": "P1"}, "not a level of the Study Root"),
    ("STUDY", "FRAME", {"SOPInstanceUID": "1.2"}, "not a level"),
    ("STUDY", "STUDY", {}, "needs the Unique Key StudyInstanceUID"),
    ("STUDY", "STUDY", {"StudyInstanceUID": ""}, "needs the Unique Key"),
    ("STUDY", "STUDY", {"StudyInstanceUID": "1.2.*"}, "wildcard"),
    ("STUDY", "IMAGE", {"SOPInstanceUID": "1.?"}, "wildcard"),
    ("STUDY", "STUDY", {"StudyInstanceUID": "1" * 65}, "at most 64"),
    ("PATIENT", "PATIENT", {"PatientID": "P1\\P2"}, "only the Unique Key of the retrieve level may be a list"),
    ("STUDY", "SERIES", {"StudyInstanceUID": "1.2\\1.3", "SeriesInstanceUID": "1.4"}, "may be a list"),
    ("STUDY", "STUDY", {"StudyInstanceUID": ["1.2"] * 5001}, "at most 5000"),
    ("WORKLIST", "STUDY", {"StudyInstanceUID": "1.2"}, "unknown information model"),
]


@pytest.mark.parametrize("model,level,identifier,expected", VALID)
def test_plan_valid(model: str, level: str, identifier: dict[str, Any], expected: list[tuple[str, list[str]]]) -> None:
    assert [(spec.unique_key, values) for spec, values in plan(level, identifier, model)] == expected


@pytest.mark.parametrize("model,level,identifier,message", INVALID)
def test_plan_invalid(model: str, level: str, identifier: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRetrieveIdentifier, match=message.replace("*", r"\*").replace("?", r"\?")):
        plan(level, identifier, model)


def test_select_instances(with_archive: Any, tmp_path: Path) -> None:
    study, other_study = generate_uid(), generate_uid()
    series = [generate_uid(), generate_uid()]
    sops: list[str] = []

    async def body(archive: Archive) -> None:
        for i in range(4):
            sop = generate_uid()
            sops.append(sop)
            path = write_ct(
                tmp_path / f"{i}.dcm", study_uid=study, series_uid=series[i % 2], sop_uid=sop, InstanceNumber=4 - i
            )
            await archive.import_file(path, Origin("import"))
        await archive.import_file(
            write_ct(tmp_path / "o.dcm", study_uid=other_study, patient_id="P2"), Origin("import")
        )

        found = await select_instances(archive, "STUDY", {"StudyInstanceUID": study})
        assert sorted(f.sop_instance_uid for f in found) == sorted(sops)
        first = found[0]
        assert first.dataset_offset > 132 and archive.blobs.exists(first.blob_key) and not first.problem
        assert first.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        assert first.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
        # within a series, by InstanceNumber
        s0 = [f.sop_instance_uid for f in found if f.series_instance_uid == series[0]]
        assert s0 == [sops[2], sops[0]]

        both = await select_instances(archive, "STUDY", {"StudyInstanceUID": [study, other_study]})
        assert len(both) == 5
        one_series = await select_instances(
            archive, "SERIES", {"StudyInstanceUID": study, "SeriesInstanceUID": series[1]}
        )
        assert {f.sop_instance_uid for f in one_series} == {sops[1], sops[3]}
        wrong_parent = await select_instances(
            archive, "SERIES", {"StudyInstanceUID": other_study, "SeriesInstanceUID": series[1]}
        )
        assert wrong_parent == []
        images = await select_instances(archive, "IMAGE", {"SOPInstanceUID": f"{sops[0]}\\{sops[3]}"})
        assert {f.sop_instance_uid for f in images} == {sops[0], sops[3]}
        patient = await select_instances(archive, "PATIENT", {"PatientID": "P2"}, model="PATIENT")
        assert len(patient) == 1
        assert await select_instances(archive, "STUDY", {"StudyInstanceUID": "1.2.3.999"}) == []

        (await instance_path(archive, sops[0])).unlink()
        again = await select_instances(archive, "IMAGE", {"SOPInstanceUID": sops[0]})
        assert again[0].dataset_offset == -1 and "missing" in again[0].problem

    with_archive(body)


def test_select_instances_unlocated_then_located(with_archive: Any, tmp_path: Path) -> None:
    """located=False reads no file; locate() finds the same offset as the File Meta parser, or says what is wrong."""
    from minipacs.core.retrieve import locate
    from minipacs.dicom.part10 import read_part10

    study = generate_uid()

    async def body(archive: Archive) -> None:
        for i in range(2):
            await archive.import_file(write_ct(tmp_path / f"{i}.dcm", study_uid=study), Origin("import"))
        lazy = await select_instances(archive, "STUDY", {"StudyInstanceUID": study}, located=False)
        assert [f.dataset_offset for f in lazy] == [-1, -1] and not any(f.problem for f in lazy)
        first = locate(lazy[0])
        assert first.dataset_offset == read_part10(archive.blobs.path_of(first.blob_key)).dataset_offset  # type: ignore[attr-defined]
        assert locate(first) is first
        archive.blobs.delete(lazy[1].blob_key)
        gone = locate(lazy[1])
        assert gone.dataset_offset == -1 and "missing" in gone.problem
        archive.blobs.path_of(lazy[0].blob_key).write_bytes(b"\0" * 200)  # type: ignore[attr-defined]
        assert "cannot be read" in locate(lazy[0]).problem

    with_archive(body)
