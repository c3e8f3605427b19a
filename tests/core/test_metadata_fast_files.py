"""core/metadata.py ``fast_text`` against the pydicom path on real files: pydicom's own test files
(several vendors, transfer syntaxes, character sets, sequences, private tags) and ours.

Where the fast builder answers, its text must be the pydicom path's; where the pydicom path fails,
the fast builder must have given up (the pydicom path then says why)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest

from minipacs.core.errors import UnreadableInstance
from minipacs.core.metadata import fast_text, model_text
from minipacs.core.stored import read_stored

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
FILES = sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_there_are_files_to_compare() -> None:
    assert len(FILES) > 50


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_fast_text_is_the_pydicom_text(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open(path, "rb") as fp:
            got = fast_text(fp, "1.2", "1.2.3", "1.2.3.4")
        try:
            want: str | None = model_text(read_stored(path, stop_before_pixels=True), "1.2", "1.2.3", "1.2.3.4")
        except (UnreadableInstance, OSError):
            want = None
    if got is not None:
        assert want is not None, "answered where the pydicom path fails"
        assert got == want


def test_most_real_files_are_covered() -> None:
    covered = 0
    for path in FILES:
        with open(path, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covered += fast_text(fp, "1", "2", "3") is not None
    assert covered >= len(FILES) // 2, covered


def test_a_missing_file_says_so_as_before(tmp_path: Path) -> None:
    """The fast path's own read of a missing file is not the error reported: the pydicom path's is."""
    from minipacs.blobs.filesystem import FilesystemBlobStore
    from minipacs.core.inflate import DEFAULT_LIMITS
    from minipacs.core.metadata import blob_text, compute

    with pytest.raises(UnreadableInstance, match="its file is missing from storage"):
        compute(tmp_path / "gone.dcm", "1", "2", "3")
    blobs = FilesystemBlobStore(tmp_path / "storage")
    with pytest.raises(UnreadableInstance, match="its file is missing from storage"):
        blob_text(blobs, "1/2/3.dcm", "1", "2", "3", DEFAULT_LIMITS)
