"""`minipacs export`: DICOM media DCMTK reads, and that `minipacs import` takes back whole."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.cli.main import main
from tests.dicomgen import write_ct

DCMDUMP = "/usr/bin/dcmdump"
DCMMKDIR = "/usr/bin/dcmmkdir"
# PS3.10 §8.5 / PS3.11 STD-GEN-*: 1-8 characters of A-Z 0-9 _
_FILE_ID = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _study(tmp_path: Path) -> tuple[str, str, list[str]]:
    study = generate_uid()
    sops = []
    for series_number in (1, 2):
        series = generate_uid()
        for n in range(3):
            sop = generate_uid()
            sops.append(sop)
            write_ct(
                tmp_path / "src" / f"{series_number}-{n}.dcm",
                study_uid=study,
                series_uid=series,
                sop_uid=sop,
                SeriesNumber=series_number,
                InstanceNumber=n + 1,
            )
    data = str(tmp_path / "data")
    assert main(["import", "--data", data, "--no-progress", str(tmp_path / "src")]) == 0
    return data, study, sops


_BELOW = {"PATIENT": "STUDY", "STUDY": "SERIES", "SERIES": "IMAGE", "IMAGE": None}


def check_offsets(ds: pydicom.Dataset) -> None:
    """Every record is reached exactly once from the root by its offsets (PS3.3 F.3.2.2), each level
    below the one above it."""
    records = {r.seq_item_tell: r for r in ds.DirectoryRecordSequence}
    seen: list[int] = []

    def walk(offset: int, kind: str | None) -> None:
        while offset:
            record = records[offset]  # KeyError: an offset that is not a record
            assert record.DirectoryRecordType == kind and offset not in seen
            seen.append(offset)
            walk(record.OffsetOfReferencedLowerLevelDirectoryEntity, _BELOW[kind])
            offset = record.OffsetOfTheNextDirectoryRecord

    walk(ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity, "PATIENT")
    assert sorted(seen) == sorted(records)
    assert (
        records[max(o for o in seen if records[o].DirectoryRecordType == "PATIENT")]
        is records[ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity]
    )


def referenced(dicomdir: Path) -> dict[str, str]:
    """SOP Instance UID -> Referenced File ID ("/"-joined) of every record of a DICOMDIR (offsets checked)."""
    ds = pydicom.dcmread(dicomdir)
    check_offsets(ds)
    return {
        str(r.ReferencedSOPInstanceUIDInFile): "/".join(r.ReferencedFileID)
        for r in ds.DirectoryRecordSequence
        if "ReferencedFileID" in r
    }


def _sop_uids(folder: Path) -> set[str]:
    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in folder.rglob("*")
        if p.is_file() and p.name not in ("DICOMDIR", "README")
    }


def test_dicomdir_folder_is_read_by_dcmtk_and_imports_back(tmp_path: Path) -> None:
    data, study, sops = _study(tmp_path)
    out = tmp_path / "cd"
    assert main(["export", "--data", data, "--study", study, "--dicomdir", str(out)]) == 0
    files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert (out / "README").is_file() and (out / "DICOMDIR").is_file()
    for rel in files:  # every File ID component: at most 8 of A-Z 0-9 _, at most 8 deep
        assert len(rel.parts) <= 8
        assert all(1 <= len(part) <= 8 and set(part) <= _FILE_ID for part in rel.parts), rel
    dump = subprocess.run([DCMDUMP, "+M", str(out / "DICOMDIR")], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    for record in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        assert f'"Directory Record" {record}' in dump.stdout
    assert "FileSetDescriptorFileID" in dump.stdout and "[README]" in dump.stdout
    # DCMTK's own check of the files against the STD-GEN-CD profile (-w: write nothing) ...
    check = subprocess.run(
        [DCMMKDIR, "-w", "-Pgp", "+r", "+p", "I0*", "+id", str(out)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0 and "E:" not in check.stderr, check.stderr
    # ... and it reads our DICOMDIR back (update mode resolves every record offset), in a copy
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    update = subprocess.run(
        [DCMMKDIR, "+U", "-nb", "-Pgp", "+r", "+p", "I0*"], cwd=copy, capture_output=True, text=True, timeout=60
    )
    assert update.returncode == 0 and "E:" not in update.stderr, update.stderr
    # pydicom reads the File-set: six instances, each referenced file present
    refs = referenced(out / "DICOMDIR")
    assert sorted(refs) == sorted(sops)
    assert all((out / file_id).is_file() for file_id in refs.values())
    # and it imports back whole into another archive
    other = str(tmp_path / "other")
    assert main(["import", "--data", other, "--no-progress", str(out)]) == 0
    back = tmp_path / "back"
    assert main(["export", "--data", other, "--study", study, "--dicomdir", str(back)]) == 0
    assert _sop_uids(back) == set(sops) == _sop_uids(out)


def test_zip_holds_the_same_file_set(tmp_path: Path) -> None:
    data, study, sops = _study(tmp_path)
    out = tmp_path / "media.zip"
    assert main(["export", "--data", data, "--study", study, "--zip", str(out)]) == 0
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        z.extractall(tmp_path / "unzipped")
    assert names[:2] == ["DICOMDIR", "README"] and len(names) == 2 + len(sops)
    refs = referenced(tmp_path / "unzipped" / "DICOMDIR")
    assert sorted(refs) == sorted(sops)
    assert set(refs.values()) == set(names[2:])


@pytest.mark.parametrize("args", [["--study", "1.2.3.4"], ["--patient", "NOBODY"]])
def test_nothing_to_export_exits_2(tmp_path: Path, args: list[str]) -> None:
    data, _, _ = _study(tmp_path)
    assert main(["export", "--data", data, *args, "--dicomdir", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag", ["--patient", "--study", "--series"])
def test_an_empty_value_is_a_usage_error_not_a_traceback(
    tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--patient "" (a patient without a Patient ID) names nothing: PS3.4 C.4.2.2.1 needs the Unique Key."""
    data, _, _ = _study(tmp_path)
    assert main(["export", "--data", data, flag, "", "--dicomdir", str(tmp_path / "x")]) == 2
    assert "Unique Key" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    data, study, _ = _study(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["export", "--data", data, "--study", study, "--dicomdir", str(tmp_path / "full")]) == 2
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
