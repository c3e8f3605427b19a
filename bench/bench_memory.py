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

``--stow`` measures the other ways in and out instead (issue 10, web/intake.py): the same
file sent by STOW-RS (the client streams the multipart body from the file, 1 MiB at a time),
then fetched back by WADO-RS and by C-GET (DCMTK getscu); VmHWM after each, and DCMTK echoscu
round trips every 0.25 s throughout (a blocked event loop would show as a long one).
JSON in bench/work/results_memory_stow.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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

ECHOSCU = "/usr/bin/echoscu"
GETSCU = "/usr/bin/getscu"
BOUNDARY = "bench-stow-boundary"

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


class Echoes(threading.Thread):
    """DCMTK echoscu against ``port`` every ``interval`` s until stopped; wall time of each, in s."""

    def __init__(self, port: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.times: list[float] = []
        self.failed = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            start = time.perf_counter()
            rc = subprocess.run(
                [ECHOSCU, "-aec", "MINIPACS", "-to", "30", "127.0.0.1", str(self.port)],
                capture_output=True,
                timeout=60,
                check=False,
            ).returncode
            self.times.append(time.perf_counter() - start)
            self.failed += rc != 0
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join(60)
        times = sorted(self.times) or [0.0]
        return {
            "echoes": len(self.times),
            "echo_failed": self.failed,
            "echo_median_ms": times[len(times) // 2] * 1000,
            "echo_max_ms": times[-1] * 1000,
        }


def _stow_body(path: Path) -> Iterator[bytes]:
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with open(path, "rb") as fh:
        while piece := fh.read(MB):
            yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def measure_stow(run_dir: Path) -> dict[str, object]:
    """STOW-RS in, WADO-RS and C-GET out, one fresh server; figures per phase."""
    import httpx

    port, http_port = free_port(), free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "out"
    study = str(dcmread(BIG, stop_before_pixels=True).StudyInstanceUID)
    results: dict[str, object] = {}
    proc = sampler = None
    try:
        # the body is the 1 GiB of Pixel Data plus the header and framing: just over the default 1 GiB limit
        env = {
            "MINIPACS_HTTP_PORT": str(http_port),
            "MINIPACS_MAX_UPLOAD_BYTES": str(2 * 1024 * MB),
            "MINIPACS_ALLOW_UNREGISTERED": "echo,store,find,get",  # getscu: an unregistered caller
        }
        proc = start_minipacs(out, port, run_dir / "server.log", env)
        results["rss_before_mb"] = proc_status(proc.pid)["VmRSS"] / 1024
        sampler = Sampler(proc.pid)
        sampler.start()
        base = f"http://127.0.0.1:{http_port}"
        echoes = Echoes(port)  # the round trip of an idle server, for comparison
        echoes.start()
        time.sleep(2.5)
        results["idle"] = echoes.stop()
        with httpx.Client(base_url=base, timeout=600) as client:
            echoes = Echoes(port)
            echoes.start()
            start = time.perf_counter()
            r = client.post(
                "/dicom-web/studies",
                content=_stow_body(BIG),
                headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
            )
            took = time.perf_counter() - start
            if r.status_code != 200:
                raise RuntimeError(f"STOW-RS answered {r.status_code}: {r.text[:500]}")
            results["stow"] = {
                "seconds": took,
                "mib_per_s": BIG.stat().st_size / MB / took,
                "vmhwm_mb": proc_status(proc.pid)["VmHWM"] / 1024,
                **echoes.stop(),
            }
            url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0].removeprefix(base)
            echoes = Echoes(port)
            echoes.start()
            start, size = time.perf_counter(), 0
            with client.stream("GET", url, headers={"Accept": "multipart/related"}) as got:
                for piece in got.iter_bytes(MB):
                    size += len(piece)
            took = time.perf_counter() - start
            if size < PIXEL_BYTES:
                raise RuntimeError(f"WADO-RS returned {size} bytes")
            results["wado"] = {
                "seconds": took,
                "mib_per_s": size / MB / took,
                "vmhwm_mb": proc_status(proc.pid)["VmHWM"] / 1024,
                **echoes.stop(),
            }
        got_dir = run_dir / "got"
        shutil.rmtree(got_dir, ignore_errors=True)
        got_dir.mkdir()
        echoes = Echoes(port)
        echoes.start()
        start = time.perf_counter()
        rc = subprocess.run(
            [
                GETSCU,
                "-aec",
                "MINIPACS",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study}",
                "-od",
                str(got_dir),
                "127.0.0.1",
                str(port),
            ],
            capture_output=True,
            timeout=600,
            check=False,
        ).returncode
        took = time.perf_counter() - start
        received = [p.stat().st_size for p in got_dir.iterdir()]
        if rc != 0 or len(received) != 1 or received[0] < PIXEL_BYTES:
            raise RuntimeError(f"getscu exited {rc} with {received}")
        results["cget"] = {
            "seconds": took,
            "mib_per_s": received[0] / MB / took,
            "vmhwm_mb": proc_status(proc.pid)["VmHWM"] / 1024,
            **echoes.stop(),
        }
        shutil.rmtree(got_dir, ignore_errors=True)
        sampler.stop()
        rss = [kb for _t, kb in sampler.samples]
        results["rss_max_sampled_mb"] = max(rss) / 1024 if rss else 0.0
        results["vmhwm_mb"] = proc_status(proc.pid)["VmHWM"] / 1024
    finally:
        if sampler is not None:
            sampler.stop()
        stop(proc)
    shutil.rmtree(out, ignore_errors=True)
    sync_disk()
    return results


def main_stow(json_path: Path) -> int:
    make_big(BIG)
    results: dict[str, object] = {"file_bytes": BIG.stat().st_size, **measure_stow(WORK / "runs" / "memory-stow")}
    for phase in ("stow", "wado", "cget"):
        r = results[phase]
        assert isinstance(r, dict)
        print(
            f"{phase:5s} {r['seconds']:6.2f} s ({r['mib_per_s']:6.1f} MiB/s)  VmHWM after {r['vmhwm_mb']:6.1f} MiB  "
            f"echoscu meanwhile: {r['echoes']} round trips, median {r['echo_median_ms']:.0f} ms, "
            f"max {r['echo_max_ms']:.0f} ms, {r['echo_failed']} failed",
            flush=True,
        )
    idle = results["idle"]
    assert isinstance(idle, dict)
    print(
        f"idle  echoscu: {idle['echoes']} round trips, median {idle['echo_median_ms']:.0f} ms, "
        f"max {idle['echo_max_ms']:.0f} ms"
    )
    hwm = float(results["vmhwm_mb"])  # type: ignore[arg-type]
    results["target_met"] = hwm * MB < 150e6
    print(
        f"RSS before {results['rss_before_mb']:.1f} MiB; max sampled {results['rss_max_sampled_mb']:.1f} MiB; "
        f"target peak RSS < 150 MB (decimal): {'MET' if results['target_met'] else 'MISSED'} "
        f"(VmHWM {hwm:.1f} MiB = {hwm * MB / 1e6:.1f} MB)"
    )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-storescp", action="store_true", help="skip the storescp reference")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--stow", action="store_true", help="STOW-RS in, WADO-RS and C-GET out (issue 10)")
    args = ap.parse_args(argv)
    if args.stow:
        return main_stow(args.json or WORK / "results_memory_stow.json")
    args.json = args.json or WORK / "results_memory.json"
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
