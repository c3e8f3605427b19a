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
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"


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


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _content(relationship: str, value_type: str, name: tuple[str, str, str], **values: Any) -> Dataset:
    """One SR content item (PS3.3 Table C.17-5 Document Relationship Macro + Table 10-2 Content Item)."""
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code(*name)]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def make_sr(
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    image: tuple[str, str, str],
    patient_id: str = "P1",
    patient_name: str = "Doe^John",
    findings: str = "",
    observer: str = "Watson^John^^Dr",
    **attributes: Any,
) -> Dataset:
    """A Comprehensive SR (PS3.3 A.35.3) that dciodvfy finds complete: a report on ``image`` (study,
    series, SOP Instance UID of a CT) whose content tree holds an observer (PNAME), the subject's name
    (PNAME), nested containers, TEXT ``findings``, a NUM, a CODE, DATE, TIME, DATETIME, a UIDREF to
    the image's study and an IMAGE reference."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = COMPREHENSIVE_SR_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate, ds.StudyTime = "20240105", "101500"
    ds.ContentDate, ds.ContentTime = "20240105", "113000"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "SR"
    ds.Manufacturer = "ACME"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    reference = Dataset()
    reference.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    reference.ReferencedSOPInstanceUID = image[2]
    series = Dataset()
    series.SeriesInstanceUID = image[1]
    series.ReferencedSOPSequence = [reference]
    evidence = Dataset()
    evidence.StudyInstanceUID = image[0]
    evidence.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    # PS3.3 C.17.3 SR Document Content Module: the root content item
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.ContinuityOfContent = "SEPARATE"
    pointed = Dataset()
    pointed.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    pointed.ReferencedSOPInstanceUID = image[2]
    measured = Dataset()
    measured.NumericValue = "12"
    measured.MeasurementUnitsCodeSequence = [_code("mm", "UCUM", "millimeter")]
    findings_container = _content(
        "CONTAINS",
        "CONTAINER",
        ("121070", "DCM", "Findings"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=[
            _content("CONTAINS", "TEXT", ("121071", "DCM", "Finding"), TextValue=findings),
            _content("CONTAINS", "NUM", ("410668003", "SCT", "Length"), MeasuredValueSequence=[measured]),
            _content(
                "CONTAINS",
                "CODE",
                ("121071", "DCM", "Finding"),
                ConceptCodeSequence=[_code("27925004", "SCT", "Nodule")],
            ),
            _content("CONTAINS", "DATE", ("111060", "DCM", "Study Date"), Date="20240105"),
            _content("CONTAINS", "TIME", ("111061", "DCM", "Study Time"), Time="101500"),
            _content("CONTAINS", "DATETIME", ("111526", "DCM", "DateTime Started"), DateTime="20240105101500"),
            _content("CONTAINS", "UIDREF", ("121018", "DCM", "Procedure Study Instance UID"), UID=image[0]),
            _content("CONTAINS", "IMAGE", ("121112", "DCM", "Source of Measurement"), ReferencedSOPSequence=[pointed]),
        ],
    )
    ds.ContentSequence = [
        _content(
            "HAS OBS CONTEXT",
            "CODE",
            ("121005", "DCM", "Observer Type"),
            ConceptCodeSequence=[_code("121006", "DCM", "Person")],
        ),
        _content("HAS OBS CONTEXT", "PNAME", ("121008", "DCM", "Person Observer Name"), PersonName=observer),
        _content("HAS OBS CONTEXT", "PNAME", ("121029", "DCM", "Subject Name"), PersonName=patient_name),
        _content("HAS OBS CONTEXT", "DATE", ("121031", "DCM", "Subject Birth Date"), Date="19700101"),
        findings_container,
    ]
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
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
    "COMPREHENSIVE_SR_STORAGE",
    "CT_IMAGE_STORAGE",
    "DeflatedExplicitVRLittleEndian",
    "ExplicitVRBigEndian",
    "ExplicitVRLittleEndian",
    "ImplicitVRLittleEndian",
    "encode_dataset",
    "generate_uid",
    "make_ct",
    "make_sr",
    "write_ct",
]
