"""`minipacs check`: index rows without their file and files without a row (core/storage_check.py)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from minipacs.cli.main import main
from tests.dicomgen import write_ct


def _import(tmp_path: Path, count: int) -> tuple[str, Path]:
    study = generate_uid()
    for n in range(count):
        write_ct(tmp_path / "src" / f"{n}.dcm", study_uid=study, series_uid=f"{study[:60]}.1", sop_uid=generate_uid())
    data = tmp_path / "data"
    assert main(["import", "--data", str(data), "--no-progress", str(tmp_path / "src")]) == 0
    return str(data), data / "storage"


def test_a_consistent_archive_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = _import(tmp_path, 3)
    capsys.readouterr()
    assert main(["check", "--data", data]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        "3 index row(s), 3 file(s) in storage",
        "0 row(s) whose file is missing",
        "0 file(s) no row names",
    ]


def test_missing_and_unindexed_files_are_listed_and_the_unindexed_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, storage = _import(tmp_path, 3)
    files = sorted(p for p in storage.rglob("*") if p.is_file())
    lost = files[0]
    lost.unlink()
    orphan = files[1].parent / "1.2.3_0123456789abcdef.dcm"  # a crash between rename and commit leaves such a file
    orphan.write_bytes(b"x")
    capsys.readouterr()
    assert main(["check", "--data", data, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    lost_key = lost.relative_to(storage).as_posix()
    assert (out["rows"], out["files"]) == (3, 3)
    assert [m["blob_key"] for m in out["missing"]] == [lost_key]
    assert out["unindexed"] == [orphan.relative_to(storage).as_posix()] and out["removed"] == []
    assert orphan.exists()

    assert main(["check", "--data", data, "--remove-unindexed"]) == 1  # the missing file is still missing
    text = capsys.readouterr().out
    assert "  missing  " in text and lost_key in text and "1 file(s) no row names, 1 removed" in text
    assert not orphan.exists() and files[1].exists() and files[2].exists()


def test_removal_is_refused_while_another_process_uses_the_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, storage = _import(tmp_path, 1)
    orphan = storage / "1.2" / "1.2.3_0123456789abcdef.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x")
    fd = os.open(Path(data) / ".minipacs.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `minipacs serve` holds it
        capsys.readouterr()
        assert main(["check", "--data", data, "--remove-unindexed"]) == 1
        captured = capsys.readouterr()
        assert "another minipacs process uses" in captured.err
        assert orphan.exists()
    finally:
        os.close(fd)
