from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config

from minipacs.core.archive import Archive
from minipacs.core.importer import import_tree, walk_files
from tests.dicomgen import write_ct


def test_import_tree_summary(with_archive: Any, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_ct(root / "a" / "1.dcm", study_uid="1.2.1", series_uid="1.2.2", sop_uid="1.2.3.1")
    write_ct(root / "a" / "2.dcm", study_uid="1.2.1", series_uid="1.2.2", sop_uid="1.2.3.2")
    write_ct(root / "b" / "deep" / "3", study_uid="1.2.1", series_uid="1.2.5", sop_uid="1.2.3.3")
    shutil.copy(root / "a" / "1.dcm", root / "b" / "copy-of-1.dcm")
    (root / "notes.txt").write_text("not an image\n")
    (root / "DICOMDIR").write_bytes(b"skipped")
    with pydicom_config.disable_value_validation():
        write_ct(root / "c" / "evil.dcm", study_uid="1.2.1", series_uid="1.2/../../..", sop_uid="1.2.3.9")
    seen: list[int] = []

    async def body(archive: Archive) -> None:
        summary = await import_tree(archive, root, seen.append)
        assert (summary.stored, summary.duplicates, summary.rejected, summary.replaced) == (3, 1, 2, 0)
        assert summary.total == 6
        reasons = dict(summary.rejections)
        assert "not a DICOM file" in reasons[root / "notes.txt"]
        assert "SeriesInstanceUID" in reasons[root / "c" / "evil.dcm"]
        assert await archive.count_instances() == 3

    with_archive(body)
    assert sorted(seen) == [1, 2, 3, 4, 5, 6]


def test_walk_is_sorted_and_skips_dicomdir(tmp_path: Path) -> None:
    for name in ("b/2", "a/1", "a/DICOMDIR", "c"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in walk_files(tmp_path)] == ["c", "a/1", "b/2"]


def test_of_a_data_folder_only_its_storage_is_walked(tmp_path: Path) -> None:
    """A minipacs data folder (or a backup): its index, intake log, lock and staging are not images."""
    for name in ("index.sqlite3", "intake/0000000000000001.seg", "staging/left.tmp", "storage/1.2/3.dcm", "x.dcm"):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in walk_files(tmp_path)] == ["data/storage/1.2/3.dcm"]
    (tmp_path / "data" / "index.sqlite3").unlink()
    (tmp_path / "data" / ".minipacs.lock").write_bytes(b"")  # a data folder whose index is PostgreSQL
    assert [p.relative_to(tmp_path / "data").as_posix() for p in walk_files(tmp_path / "data")] == ["storage/1.2/3.dcm"]
    (tmp_path / "data" / ".minipacs.lock").unlink()  # no longer a data folder: every file
    assert len(list(walk_files(tmp_path))) == 4
