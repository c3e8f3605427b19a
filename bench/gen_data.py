#!/usr/bin/env python3
"""Generate the benchmark data sets under bench/work/ (gitignored).

  ct/     N instances (default 1000) of 512x512x16-bit CT, ~0.5 MB each
  small/  2000 instances of 64x64x16-bit (secondary-capture-like MR)
  store-small-500/  500 x 64x64 (~9.5 kB each) in 4 subfolders p0..p3 (bench_store.py)
  store-ct-200/     200 x 512x512 CT (~0.5 MB each) (bench_store.py; --quick: 100 and 40)

Explicit VR Little Endian, one study / one series per set, a realistic header.
The header is built once with pydicom; per instance only the UIDs and
instance-level attributes change, and the pixel bytes are reused, so writing
1000 files takes a few seconds. Generation is skipped when the folder already
holds the right number of .dcm files.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

WORK = Path(__file__).resolve().parent / "work"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
IMPL_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's implementation-UID root


def pixel_bytes(rows: int, cols: int, seed: int) -> bytes:
    """Random-ish 12-bit values in 16-bit words (reused for every instance)."""
    rng = random.Random(seed)
    block = bytes(rng.getrandbits(8) if i % 2 == 0 else rng.getrandbits(4) for i in range(65536))
    need = rows * cols * 2
    return (block * (need // len(block) + 1))[:need]


def base_dataset(modality: str, sop_class: str, rows: int, cols: int, study_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.StudyDate = "20240312"
    ds.SeriesDate = "20240312"
    ds.AcquisitionDate = "20240312"
    ds.ContentDate = "20240312"
    ds.StudyTime = "101500"
    ds.SeriesTime = "101712"
    ds.AccessionNumber = "ACC20240312001"
    ds.Modality = modality
    ds.Manufacturer = "BENCH MEDICAL SYSTEMS"
    ds.InstitutionName = "Bench General Hospital"
    ds.ReferringPhysicianName = "Doe^John^^Dr."
    ds.StationName = "BENCH01"
    ds.StudyDescription = f"{modality} CHEST ABDOMEN PELVIS"
    ds.SeriesDescription = "AXIAL 1.0 SOFT TISSUE"
    ds.ManufacturerModelName = "Benchmark 3000"
    ds.PatientName = "Benchmark^Patient^Q"
    ds.PatientID = "BENCH0001"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.PatientAge = "064Y"
    ds.PatientWeight = "72.5"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.SoftwareVersions = "1.0"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = "2"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    if modality == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    return ds


def count_dcm(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*.dcm")) if folder.is_dir() else 0


def generate(
    folder: Path, count: int, modality: str, sop_class: str, rows: int, cols: int, seed: int, parts: int = 1
) -> None:
    """``count`` instances in ``folder``; with ``parts`` > 1 split in order into subfolders
    ``p0`` .. ``p{parts-1}`` (one per parallel association of bench_store.py)."""
    if count_dcm(folder) == count:
        print(f"{folder}: {count} instances present, skipping")
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.rglob("*.dcm"):
        old.unlink()
    start = time.perf_counter()
    pixels = pixel_bytes(rows, cols, seed)
    base = base_dataset(modality, sop_class, rows, cols, generate_uid(), generate_uid())
    for n in range(1, count + 1):
        ds = copy.copy(base)  # shallow: per-instance elements are replaced, not mutated
        sop_uid = generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = str(n)
        ds.AcquisitionNumber = "1"
        ds.ImagePositionPatient = ["-179.65", "-179.65", f"{-n * 1.0:.2f}"]
        ds.SliceLocation = f"{-n * 1.0:.2f}"
        ds.ContentTime = f"1017{n % 60:02d}"
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPL_UID
        meta.ImplementationVersionName = "MINIPACS_BENCH"
        ds.file_meta = meta
        target = folder / f"p{(n - 1) * parts // count}" if parts > 1 else folder
        target.mkdir(exist_ok=True)
        ds.save_as(target / f"{n:05d}.dcm", enforce_file_format=True)
    took = time.perf_counter() - start
    print(f"{folder}: wrote {count} instances of {rows}x{cols} in {took:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", type=int, default=1000, help="number of CT instances [1000]")
    ap.add_argument("--small", type=int, default=2000, help="number of small instances [2000]")
    ap.add_argument("--work", type=Path, default=WORK, help=f"output root [{WORK}]")
    args = ap.parse_args(argv)
    generate(args.work / "ct", args.ct, "CT", CT_IMAGE_STORAGE, 512, 512, 1)
    generate(args.work / "small", args.small, "MR", MR_IMAGE_STORAGE, 64, 64, 2)
    for folder, count, kind in store_sets(args.work, quick=False).values():
        generate_kind(folder, count, kind)
    return 0


#: bench_store.py's sets: (subfolder, count, kind) -- full run, then --quick.
STORE_SETS = {
    "small": ("store-small-{n}", 500, "small"),
    "ct": ("store-ct-{n}", 200, "ct"),
}
STORE_SETS_QUICK = {"small": 100, "ct": 40}
#: Associations (storescu processes) per bench_store.py set; "small4" sends the small set's files.
STORE_PARTS = 4


def store_sets(work: Path = WORK, quick: bool = False) -> dict[str, tuple[Path, int, str]]:
    """bench_store.py's data: name -> (folder, instance count, kind). The small folder is split
    into STORE_PARTS subfolders so the parallel set can give each association a quarter."""
    out = {}
    for name, (pattern, count, kind) in STORE_SETS.items():
        n = STORE_SETS_QUICK[name] if quick else count
        out[name] = (work / pattern.format(n=n), n, kind)
    return out


def generate_kind(folder: Path, count: int, kind: str) -> None:
    if kind == "ct":
        generate(folder, count, "CT", CT_IMAGE_STORAGE, 512, 512, 1)
    else:
        generate(folder, count, "MR", MR_IMAGE_STORAGE, 64, 64, 2, parts=STORE_PARTS)


if __name__ == "__main__":
    sys.exit(main())
