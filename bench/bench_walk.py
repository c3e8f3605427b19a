#!/usr/bin/env python3
"""What the ingest structure walk costs per instance (issue 10, "Never store a broken dataset").

Writes one instance of each benchmark set (bench/gen_data.py's header: 64x64 = 9.5 kB, 512x512 CT
= 0.5 MB; explicit VR little endian) and of a deflated copy of the small one, then times, in process
CPU per call: the walk of the whole staged file as ingest runs it (core/structure.py check_staged:
open, 64 KiB windows, the walk), the walk alone over bytes in memory, the deflated check (inflate +
walk, core/inflate.py check_deflated) and, for scale, the header parse ingest already does
(core/header.py read_header).

  PYTHONPATH=src python bench/bench_walk.py [--repeat 5000]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_data import CT_IMAGE_STORAGE, base_dataset, pixel_bytes

from minipacs.core.header import read_header
from minipacs.core.inflate import DatasetLimits, check_deflated
from minipacs.core.structure import StructureWalk, check_staged


def dataset_bytes(rows: int, cols: int) -> bytes:
    ds = base_dataset("CT", CT_IMAGE_STORAGE, rows, cols, generate_uid(), generate_uid())
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = "1"
    ds.PixelData = pixel_bytes(rows, cols, 1)
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True)
    return out.getvalue()


def cpu_us(call: Callable[[], object], repeat: int) -> float:
    call()
    start = time.process_time()
    for _ in range(repeat):
        call()
    return (time.process_time() - start) / repeat * 1e6


def measure(data: bytes, folder: Path, repeat: int, *, deflated: bool) -> list[tuple[str, float]]:
    path = folder / f"{len(data)}.bin"
    path.write_bytes(data)

    def walk() -> None:
        StructureWalk(implicit=False, little_endian=True, max_depth=64, size=len(data), encapsulated=False).walk(data)

    out = [
        ("check_staged (file)", cpu_us(lambda: check_staged(path, 0, ExplicitVRLittleEndian, 64), repeat)),
        ("walk (in memory)", cpu_us(walk, repeat)),
        ("read_header (for scale)", cpu_us(lambda: read_header(path, 0, ExplicitVRLittleEndian), repeat)),
    ]
    if deflated:
        packed = folder / f"{len(data)}.deflated"
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        packed.write_bytes(compressor.compress(data) + compressor.flush())
        inflate_and_walk = cpu_us(lambda: check_deflated(packed, 0, DatasetLimits()), repeat)
        out.append(("deflated: check_deflated (inflate + walk)", inflate_and_walk))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5000)
    args = ap.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-walk-"))
    for label, (rows, cols) in (("small 64x64", (64, 64)), ("CT 512x512", (512, 512))):
        data = dataset_bytes(rows, cols)
        print(f"{label}: {len(data)} bytes")
        for name, us in measure(data, folder, args.repeat, deflated=rows == 64):
            print(f"  {name:42s} {us:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
