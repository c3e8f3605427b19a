"""`minipacs modify | merge | split | corrections` (in-process): corrections on the command line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from minipacs.cli.main import main
from tests.dicomgen import write_ct


def _files(data: Path) -> dict[str, pydicom.Dataset]:
    """The stored file of each instance, as the index names it: the copies a correction replaced
    stay on disk keep_replaced_seconds (queued in blob_removals) beside them."""
    storage = data / "storage"
    with sqlite3.connect(data / "index.sqlite3") as db:
        named = {key for (key,) in db.execute("SELECT blob_key FROM instances")}
        queued = {key for (key,) in db.execute("SELECT blob_key FROM blob_removals")}
    on_disk = {p.relative_to(storage).as_posix() for p in storage.rglob("*.dcm")}
    assert on_disk == named | queued, "a file that is neither named nor queued for removal"
    return {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(storage / k, stop_before_pixels=True) for k in named)}


def test_merge_split_and_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keep_study, dup_study, dup_series = generate_uid(), generate_uid(), generate_uid()
    write_ct(
        tmp_path / "src" / "a.dcm",
        study_uid=keep_study,
        series_uid=generate_uid(),
        sop_uid=generate_uid(),
        patient_id="KEEP",
    )
    moved = generate_uid()
    write_ct(tmp_path / "src" / "b.dcm", study_uid=dup_study, series_uid=dup_series, sop_uid=moved, patient_id="DUP")
    data = tmp_path / "data"
    assert main(["import", "--data", str(data), "--no-progress", str(tmp_path / "src")]) == 0
    capsys.readouterr()
    assert main(["merge", "--data", str(data), "--from", "DUP", "--into", "KEEP"]) == 0
    assert json.loads(capsys.readouterr().out)["old_values"]["StudyInstanceUIDs"] == [dup_study]
    assert main(["split", "--data", str(data), "--series", dup_series, "--study", keep_study]) == 0
    assert json.loads(capsys.readouterr().out)["new_values"] == {"StudyInstanceUID": keep_study}
    assert {ds.StudyInstanceUID for ds in _files(data).values()} == {keep_study}
    assert _files(data)[moved].PatientID == "KEEP"
    assert main(["corrections", "--data", str(data), "--json"]) == 0
    log = json.loads(capsys.readouterr().out)
    assert [row["operation"] for row in log] == ["move", "merge"]
    assert all("command line" in row["actor"] for row in log)
    assert main(["corrections", "--data", str(data), "--target", dup_series]) == 0
    assert capsys.readouterr().out.count("\n") == 1
    assert main(["split", "--data", str(data), "--series", dup_series]) == 0  # to a new study
    new = json.loads(capsys.readouterr().out)["new_values"]["StudyInstanceUID"]
    assert _files(data)[moved].StudyInstanceUID == new != keep_study


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["modify", "--patient", "P1", "NoEquals"], 2, "is not Keyword=value"),
        (["modify", "--patient", "NOBODY", "PatientName=X"], 1, "'NOBODY' is not in the archive"),
        (["modify", "--study", "1.2.3", "PatientName=X"], 1, "correct the patient"),
        (["merge", "--from", "P1", "--into", "P1"], 1, "with itself"),
    ],
)
def test_refusals_say_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, words: str
) -> None:
    write_ct(tmp_path / "src" / "a.dcm", study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid())
    data = str(tmp_path / "data")
    assert main(["import", "--data", data, "--no-progress", str(tmp_path / "src")]) == 0
    capsys.readouterr()
    assert main([args[0], "--data", data, *args[1:]]) == code
    assert words in capsys.readouterr().err
