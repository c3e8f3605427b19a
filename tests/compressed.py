"""Compressed test instances: pydicom's own test data files (shipped with pydicom, no download).

Several of them are the same MR image in different syntaxes and share their UIDs, so each
copy gets fresh Study/Series/SOP Instance UIDs before it is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

# name -> (file in pydicom's test data, stored transfer syntax, frames)
COMPRESSED: Final[dict[str, tuple[str, str, int]]] = {
    "jpeg_baseline": ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", 1),
    "jpeg_lossless": ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70", 1),
    "jpeg_ls": ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", 1),
    "jpeg2000_lossless": ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", 1),
    "jpeg2000": ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", 1),
    "rle": ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", 1),
    "rle_2frames": ("SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.5", 2),
}


def source(name: str) -> Path:
    found = get_testdata_file(COMPRESSED[name][0])
    if found is None:
        raise FileNotFoundError(f"pydicom's test file {COMPRESSED[name][0]} is not installed")
    return Path(str(found))


def fresh_copy(name: str, folder: Path, study_uid: str | None = None) -> tuple[Path, pydicom.Dataset]:
    """A copy of the test file ``name`` with new UIDs (pixel data untouched); its path and dataset."""
    ds = pydicom.dcmread(source(name))
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if not ds.get("PatientID"):
        ds.PatientID = "P-" + name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)
