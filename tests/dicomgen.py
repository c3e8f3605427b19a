"""Test DICOM generators shared by the test suite (pydicom-built, never real patients)."""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def make_ct(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    rows: int = 64,
    cols: int = 64,
    patient_id: str = "P1",
    patient_name: str = "Doe^John",
    transfer_syntax: str = ExplicitVRLittleEndian,
    **attributes: Any,
) -> Dataset:
    """A small CT Image instance with file meta; extra keyword=value attributes are set last.

    Call under ``pydicom.config.disable_value_validation()`` to build hostile values.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20240131"
    ds.SeriesDate = "20240131"
    ds.StudyTime = "101530.25"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "CT"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.StudyDescription = "CT HEAD"
    ds.SeriesDescription = "AXIAL"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.InstanceNumber = 3
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(rows * cols * 2)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta = meta
    return ds


def write_ct(path: Path, **kw: Any) -> Path:
    """Write a make_ct instance as a Part 10 file; UIDs are generated unless given."""
    kw.setdefault("study_uid", generate_uid())
    kw.setdefault("series_uid", generate_uid())
    kw.setdefault("sop_uid", generate_uid())
    ds = make_ct(**kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def encode_dataset(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    """The dataset alone (no preamble, no file meta) as a peer would send it in P-DATA."""
    syntax = UID(transfer_syntax or ds.file_meta.TransferSyntaxUID)
    bare = Dataset()
    bare.update(ds)
    buffer = io.BytesIO()
    pydicom.dcmwrite(
        buffer,
        bare,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=syntax != ExplicitVRBigEndian,
    )
    data = buffer.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data


__all__ = [
    "CT_IMAGE_STORAGE",
    "DeflatedExplicitVRLittleEndian",
    "ExplicitVRBigEndian",
    "ExplicitVRLittleEndian",
    "ImplicitVRLittleEndian",
    "encode_dataset",
    "generate_uid",
    "make_ct",
    "write_ct",
]
