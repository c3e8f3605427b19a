"""Worklist entries for tests, written the way DCMTK's wlmscpfs keeps them (.wl files)."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian


def entry(
    patient_id: str,
    name: str,
    accession: str,
    modality: str,
    station: str,
    date: str,
    time: str,
    physician: str = "Strange^Stephen",
    study_uid: str = "",
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = accession
    ds.StudyInstanceUID = study_uid or f"1.2.826.0.1.3680043.10.9.{accession.removeprefix('ACC') or '1'}"
    ds.RequestedProcedureID = f"RP{accession}"
    ds.RequestedProcedureDescription = f"{modality} exam"
    ds.ReferringPhysicianName = "Who^Doctor"
    sps = Dataset()
    sps.ScheduledStationAETitle = station
    sps.ScheduledProcedureStepStartDate = date
    sps.ScheduledProcedureStepStartTime = time
    sps.Modality = modality
    sps.ScheduledPerformingPhysicianName = physician
    sps.ScheduledProcedureStepDescription = f"{modality} step"
    sps.ScheduledProcedureStepID = f"SPS{accession}"
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


ENTRIES = [
    entry("123456", "Doe^John", "ACC1", "CT", "CT01", "20240105", "083000"),
    entry("123456", "Doe^John", "ACC2", "MR", "MR01", "20240106", "140000", physician="House^Gregory"),
    entry("654321", "Roe^Jane", "ACC3", "CT", "CT02", "20240107", "093000"),
    entry("777777", "Müller^Jürgen", "ACC4", "US", "US01", "20240210", "101500"),
]


def write_wl(folder: Path, datasets: list[Dataset] | None = None, part10: bool = True) -> list[Path]:
    """``folder``/wklist{n}.wl for each dataset (Part 10 like DCMTK's dump2dcm output, or raw)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets or ENTRIES, 1):
        path = folder / f"wklist{n}.wl"
        if part10:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
            meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.10.9.99.{n}"
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            copy = Dataset(ds)
            copy.file_meta = meta
            copy.save_as(path, enforce_file_format=True)
        else:
            ds.save_as(path, implicit_vr=True, little_endian=True)
        paths.append(path)
    return paths
