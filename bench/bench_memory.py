#!/usr/bin/env python3
"""Peak memory of minipacs receiving one ~1 GiB instance (target: peak RSS < 150 MB).

Writes bench/work/big/big.dcm once: a pydicom-written Part 10 header (CT, 2048
frames of 512x512x16 bit), then the Pixel Data element header (7FE0,0010) OW
with an explicit length of 1 GiB, then the file is extended with truncate()
(sparse: the value reads as zeros, costs no disk). pydicom reads it back as a
check. The file is sent with /usr/bin/storescu to a fresh ``minipacs serve``;
the server's VmRSS is sampled every 50 ms during the transfer and VmHWM (the
kernel's high-water mark) read at the end, before the server is stopped. The
same file sent to DCMTK ``storescp +B`` gives a reference (not a target).
Results: printed, and JSON in bench/work/results_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    WORK,
    count_files,
    free_port,
    proc_status,
    start_minipacs,
    start_storescp,
    stop,
    sync_disk,
)
from bench_store import send

ROWS, COLS, FRAMES = 512, 512, 2048
PIXEL_BYTES = ROWS * COLS * FRAMES * 2  # 1 GiB
BIG = WORK / "big" / "big.dcm"
MB = 1024 * 1024


def make_big(path: Path) -> None:
    if path.exists() and path.stat().st_size > PIXEL_BYTES:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            if int(ds.NumberOfFrames) == FRAMES:
                print(f"{path}: present, {path.stat().st_size / MB:.0f} MiB")
                return
        except Exception:  # noqa: BLE001 - regenerate
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    sop_uid = generate_uid()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.ContentDate = "20240312"
    ds.StudyTime = ds.ContentTime = "101500"
    ds.AccessionNumber = "ACCBIG"
    ds.Modality = "CT"
    ds.Manufacturer = "BENCH MEDICAL SYSTEMS"
    ds.PatientName = "Benchmark^Big"
    ds.PatientID = "BENCHBIG"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = str(FRAMES)
    ds.Rows = ROWS
    ds.Columns = COLS
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    ds.file_meta = meta
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
        # (7FE0,0010) OW, explicit VR LE: tag, "OW", 2 reserved bytes, 4-byte length
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, PIXEL_BYTES))
        fh.truncate(fh.tell() + PIXEL_BYTES)  # sparse: reads as zeros
    os.replace(tmp, path)
    check = dcmread(path, defer_size=1024)
    assert int(check.NumberOfFrames) == FRAMES and check["PixelData"].tag == 0x7FE00010
    assert path.stat().st_size == len(buf.getvalue()) + 12 + PIXEL_BYTES
    print(f"{path}: wrote {path.stat().st_size / MB:.0f} MiB (sparse), pydicom reads it")


class Sampler(threading.Thread):
    """VmRSS of ``pid`` every ``interval`` s until stopped."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self._stop_event.is_set():
            try:
                self.samples.append((time.monotonic() - t0, proc_status(self.pid)["VmRSS"]))
            except (FileNotFoundError, KeyError, ProcessLookupError):
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def measure(target: str, run_dir: Path) -> dict[str, float | int]:
    port = free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "out"
    proc = sampler = None
    try:
        if target == "minipacs":
            proc = start_minipacs(out, port, run_dir / "server.log")
        else:
            proc = start_storescp(out, port, run_dir / "server.log")
        before = proc_status(proc.pid)
        sampler = Sampler(proc.pid)
        sampler.start()
        took = send(BIG.parent, port, run_dir / "storescu.log")
        time.sleep(0.2)
        sampler.stop()
        after = proc_status(proc.pid)
        if target == "minipacs":
            stored = [p for p in (out / "storage").rglob("*.dcm")]
        else:
            stored = [p for p in out.rglob("*") if p.is_file()]
        sizes = [p.stat().st_size for p in stored]
    finally:
        if sampler is not None:
            sampler.stop()
        stop(proc)
    if len(stored) != 1 or sizes[0] < PIXEL_BYTES:
        raise RuntimeError(f"{target} did not store the big instance: {stored} {sizes}")
    for p in stored:
        p.unlink()
    sync_disk()
    rss = [kb for _t, kb in sampler.samples]
    return {
        "seconds": took,
        "mib_per_s": BIG.stat().st_size / MB / took,
        "rss_before_mb": before["VmRSS"] / 1024,
        "rss_max_sampled_mb": max(rss) / 1024 if rss else 0.0,
        "vmhwm_mb": after["VmHWM"] / 1024,
        "samples": len(rss),
        "stored_bytes": sizes[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-storescp", action="store_true", help="skip the storescp reference")
    ap.add_argument("--json", type=Path, default=WORK / "results_memory.json")
    args = ap.parse_args(argv)
    make_big(BIG)
    if count_files(BIG.parent) != 1:
        print(f"{BIG.parent} must hold only big.dcm", file=sys.stderr)
        return 2
    results = {"file_bytes": BIG.stat().st_size}
    for target in ("minipacs",) + (() if args.no_storescp else ("storescp",)):
        r = measure(target, WORK / "runs" / f"memory-{target}")
        results[target] = r
        print(
            f"{target:9s} {r['seconds']:6.2f} s ({r['mib_per_s']:6.1f} MiB/s)  "
            f"RSS before {r['rss_before_mb']:6.1f} MiB  "
            f"max sampled VmRSS {r['rss_max_sampled_mb']:6.1f} MiB  VmHWM {r['vmhwm_mb']:6.1f} MiB  "
            f"({r['samples']} samples)",
            flush=True,
        )
    m = results["minipacs"]
    ok = m["vmhwm_mb"] * MB < 150e6  # type: ignore[index]
    results["target_met"] = ok
    print(
        f"target peak RSS < 150 MB (decimal): {'MET' if ok else 'MISSED'} "
        f"(VmHWM {m['vmhwm_mb']:.1f} MiB = {m['vmhwm_mb'] * MB / 1e6:.1f} MB)"
    )  # type: ignore[index]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
