"""Compressed test instances: pydicom's own test data files (shipped with pydicom, no download).

Several of them are the same MR image in different syntaxes and share their UIDs, so each
copy gets fresh Study/Series/SOP Instance UIDs before it is stored. The 12-bit JPEG Extended
ones are checked against DCMTK: :func:`dcmcjpeg_12bit` makes one with ``dcmcjpeg +ee``,
:func:`dcmdjpeg_pixels` decodes with ``dcmdjpeg``. The tests' own ``pixel_array`` decodes
with the plugins the server uses (``decoders.register()`` below).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from minipacs.core import decoders
from tests.peers import dcmtk

decoders.register()

# name -> (file in pydicom's test data, stored transfer syntax, frames)
COMPRESSED: Final[dict[str, tuple[str, str, int]]] = {
    "jpeg_baseline": ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", 1),
    "jpeg_lossless": ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70", 1),
    "jpeg_ls": ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", 1),
    "jpeg2000_lossless": ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", 1),
    "jpeg2000": ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", 1),
    "rle": ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", 1),
    "rle_2frames": ("SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.5", 2),
    "jpeg_extended_12bit": ("JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51", 1),  # 12-bit JPEG Extended (Process 2 & 4)
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


def dcmcjpeg_12bit(folder: Path, frames: int = 2) -> Path:
    """A 12-bit MONOCHROME2 image of ``frames`` frames, made here, encoded by DCMTK's ``dcmcjpeg +ee``.

    ``+ee``: JPEG Extended Sequential (Process 4 for 12 bits), 1.2.840.10008.1.2.4.51.
    """
    rows, columns = 64, 80
    y, x = np.mgrid[0:rows, 0:columns]
    noise = np.random.default_rng(12).integers(0, 40, (frames, rows, columns))
    pixels = ((x * 50 + y * 13)[np.newaxis] + noise + 300 * np.arange(frames)[:, None, None]) % 4096
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "P-jpeg12", "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    plain, encoded = folder / "plain12.dcm", folder / "jpeg12.dcm"
    ds.save_as(plain, enforce_file_format=True)
    subprocess.run([dcmtk("dcmcjpeg"), "+ee", str(plain), str(encoded)], check=True, capture_output=True, timeout=60)
    return encoded


def dcmdjpeg_pixels(path: Path, folder: Path) -> Any:
    """The pixels of ``path`` as DCMTK's ``dcmdjpeg`` decodes them (a numpy array, frames first)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"dcmdjpeg-{path.name}"
    subprocess.run([dcmtk("dcmdjpeg"), str(path), str(out)], check=True, capture_output=True, timeout=60)
    return pydicom.dcmread(out).pixel_array
