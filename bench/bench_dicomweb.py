#!/usr/bin/env python3
"""DICOMweb: minipacs vs Orthanc + its DICOMweb plugin, same data, same client, same run.

Data (identical in both servers):
  * N studies of one tiny CT instance each (no pixels), the rows of bench_find.build_index
    (same patients, PatientID PIDnnnnnnn, 5 studies per patient, dates 2010-2024 from the
    same seeded RNG). minipacs gets them by bench_find.build_index (SQLite directly);
    Orthanc gets the same attributes as Part 10 files POSTed to /instances (the slow part).
  * the 1,000-instance CT study of bench/work/ct (gen_data.py): ``minipacs import`` into
    the same data folder; ``minipacs store`` (C-STORE) into Orthanc.

Measured, rounds alternating between the servers (order rotated each round):
  QIDO-RS  GET /dicom-web/studies?PatientID=X              (random X, same sequence for both)
  QIDO-RS  GET /dicom-web/studies?StudyDate=20240101-20240131&limit=100
  WADO-RS  GET /dicom-web/studies/{uid}  multipart/related; type="application/dicom",
           streamed read of the whole body, wall time and MB/s; part count checked.

  python bench/bench_dicomweb.py [--studies 10000] [--qido-rounds 20] [--wado-rounds 3] [--wado-only]
(--wado-only: only the CT study in both servers, no QIDO; WADO-RS does not depend on the study count.)
Results: printed, JSON in bench/work/results_dicomweb.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import io
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _common import (
    ORTHANC_DICOMWEB,
    cpu_seconds,
    free_port,
    machine_info,
    minipacs_cmd,
    peer_env,
    spawn,
    start_orthanc,
    stop,
    stop_all,
    wait_listening,
)
from bench_find import SURNAMES, build_index

WORK = BENCH / "work"
DATE_QUERY = "StudyDate=20240101-20240131&limit=100"


def study_part10(s: int, studies: int, day: dt.date) -> bytes:
    """Study ``s`` exactly as bench_find.build_index describes it, as a small Part 10 file."""
    patients = max(studies // 5, 1)
    p = s % patients
    uid = f"1.2.826.0.1.3680043.10.9.{s + 1}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = uid + ".1.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = uid + ".1.1"
    ds.PatientName = f"{SURNAMES[p % len(SURNAMES)]}{p:06d}^GIVEN{p % 97}"
    ds.PatientID = f"PID{p:07d}"
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uid
    ds.StudyDate = day.strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{s:08d}"
    ds.StudyID = "1"
    ds.StudyDescription = "CT HEAD"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = uid + ".1"
    ds.Modality = "CT" if s % 3 else "MR"
    ds.SeriesNumber = 1
    ds.SeriesDate = ds.StudyDate
    ds.InstanceNumber = 1
    ds.Rows = 512
    ds.Columns = 512
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def study_days(studies: int) -> list[dt.date]:
    """The same date sequence as bench_find.build_index (Random(3), one draw per study)."""
    rng = random.Random(3)
    first = dt.date(2010, 1, 1)
    return [first + dt.timedelta(days=rng.randrange(365 * 15)) for _ in range(studies)]


def load_orthanc(base: str, studies: int, workers: int = 4) -> float:
    days = study_days(studies)
    start = time.perf_counter()

    def post(chunk: range) -> None:
        with httpx.Client(timeout=60) as client:
            for s in chunk:
                r = client.post(
                    f"{base}/instances",
                    content=study_part10(s, studies, days[s]),
                    headers={"Content-Type": "application/dicom"},
                )
                r.raise_for_status()

    step = (studies + workers - 1) // workers
    with cf.ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(post, range(i, min(i + step, studies))) for i in range(0, studies, step)]:
            fut.result()
    return time.perf_counter() - start


def start_orthanc_web(run_dir: Path, port: int, http_port: int) -> subprocess.Popen[bytes]:
    """Orthanc (SQLite index) with the Debian DICOMweb plugin (orthanc-dicomweb) and nothing else."""
    if not ORTHANC_DICOMWEB.exists():
        raise SystemExit(f"{ORTHANC_DICOMWEB} missing: apt-get install orthanc-dicomweb")
    return start_orthanc(
        run_dir,
        port,
        http_port,
        plugins=[ORTHANC_DICOMWEB],
        config={"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}},
    )


def start_minipacs(run_dir: Path, data: Path, port: int, http_port: int) -> subprocess.Popen[bytes]:
    env = peer_env({"MINIPACS_HTTP_PORT": str(http_port), "MINIPACS_LOG_LEVEL": "WARNING"})
    log = run_dir / "minipacs.log"
    cmd = minipacs_cmd() + ["serve", "--data", str(data), "--port", str(port), "--host", "127.0.0.1"]
    proc = spawn(cmd + ["--aet", "MINIPACS"], log, env)
    wait_listening(proc, http_port, timeout=120.0, log=log)
    return proc


def qido(client: httpx.Client, root: str, query: str) -> tuple[float, int]:
    start = time.perf_counter()
    r = client.get(f"{root}/studies?{query}", headers={"Accept": "application/dicom+json"})
    body = r.content
    took = time.perf_counter() - start
    if r.status_code == 204:
        return took, 0
    r.raise_for_status()
    return took, len(json.loads(body))


def wado(client: httpx.Client, root: str, uid: str) -> tuple[float, int, int]:
    """Streamed read of the whole multipart body: (seconds, bytes, parts)."""
    headers = {"Accept": 'multipart/related; type="application/dicom"'}
    start = time.perf_counter()
    nbytes, boundary, tail, parts = 0, b"", b"", 0
    with client.stream("GET", f"{root}/studies/{uid}", headers=headers) as r:
        r.raise_for_status()
        ctype = r.headers["content-type"]
        for param in ctype.split(";"):
            key, _, val = param.strip().partition("=")
            if key.lower() == "boundary":
                boundary = b"--" + val.strip('"').encode()
        for chunk in r.iter_raw(1 << 20):
            nbytes += len(chunk)
            data = tail + chunk
            parts += data.count(boundary)
            tail = data[-(len(boundary) - 1) :] if len(boundary) > 1 else b""
    took = time.perf_counter() - start
    return took, nbytes, parts - 1  # the closing delimiter is one more boundary


def median(values: Any) -> float:
    """The median, or NaN for no values (``--wado-only`` has no QIDO rounds)."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10_000)
    ap.add_argument("--qido-rounds", type=int, default=20)
    ap.add_argument("--wado-rounds", type=int, default=3)
    ap.add_argument("--wado-only", action="store_true", help="load only the CT study and measure only WADO-RS")
    ap.add_argument(
        "--py-spy",
        type=Path,
        metavar="FILE",
        help="record the minipacs server with py-spy during the WADO-RS rounds (collapsed stacks)",
    )
    args = ap.parse_args(argv)
    if args.wado_only:
        args.studies, args.qido_rounds = 0, 0
    ct = WORK / "ct"
    expected = sum(1 for _ in ct.rglob("*.dcm"))
    if expected == 0:
        print("no data: run bench/gen_data.py first", file=sys.stderr)
        return 2
    ct_uid = str(pydicom.dcmread(next(iter(sorted(ct.rglob("*.dcm")))), stop_before_pixels=True).StudyInstanceUID)
    run_dir = WORK / "runs" / "dicomweb"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    info: dict[str, Any] = {"studies": args.studies}
    try:
        # minipacs: index built directly, then the CT study through the normal import
        data = run_dir / "minipacs-data"
        t0 = time.perf_counter()
        if args.studies:
            build_index(data, args.studies)
        subprocess.run(
            minipacs_cmd() + ["import", "--no-progress", "--data", str(data), str(ct)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        info["minipacs_load_s"] = time.perf_counter() - t0
        mp_http = free_port()
        servers["minipacs"] = (
            start_minipacs(run_dir, data, free_port(), mp_http),
            f"http://127.0.0.1:{mp_http}/dicom-web",
        )
        print(f"minipacs: {args.studies} studies + CT loaded in {info['minipacs_load_s']:.1f} s", flush=True)
        # Orthanc: POST the same studies, C-STORE the CT study
        o_port, o_http = free_port(), free_port()
        servers["orthanc"] = (start_orthanc_web(run_dir, o_port, o_http), f"http://127.0.0.1:{o_http}/dicom-web")
        base = f"http://127.0.0.1:{o_http}"
        info["orthanc_version"] = httpx.get(f"{base}/system").json().get("Version")
        plugins = httpx.get(f"{base}/plugins/dicom-web").json()
        info["orthanc_dicomweb_version"] = plugins.get("Version")
        took = load_orthanc(base, args.studies) if args.studies else 0.0
        info["orthanc_load_studies_s"] = took
        print(
            f"orthanc: {args.studies} studies POSTed in {took:.1f} s ({args.studies / max(took, 1e-9):.0f}/s)",
            flush=True,
        )
        t0 = time.perf_counter()
        subprocess.run(
            minipacs_cmd() + ["store", "--no-progress", "127.0.0.1", str(o_port), "-aec", "ORTHANC", str(ct)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        info["orthanc_load_ct_s"] = time.perf_counter() - t0
        stats = httpx.get(f"{base}/statistics").json()
        info["orthanc_counts"] = {k: stats[k] for k in ("CountStudies", "CountInstances")}
        print(f"orthanc: CT stored in {info['orthanc_load_ct_s']:.1f} s; {info['orthanc_counts']}", flush=True)

        names = list(servers)
        patients = max(args.studies // 5, 1)
        rng = random.Random(11)
        pids = [f"PID{rng.randrange(patients):07d}" for _ in range(args.qido_rounds)]
        res: dict[str, dict[str, list[Any]]] = {n: {"pid": [], "date": [], "wado": []} for n in names}
        counts: dict[str, dict[str, list[int]]] = {n: {"pid": [], "date": []} for n in names}
        clients = {n: httpx.Client(timeout=600) for n in names}
        for n in names:  # one warm-up request each (connection, caches)
            qido(clients[n], servers[n][1], f"PatientID={pids[0] if pids else 'none'}")
            qido(clients[n], servers[n][1], DATE_QUERY)
        for rnd in range(args.qido_rounds):
            order = names[rnd % 2 :] + names[: rnd % 2]
            for n in order:
                took, c = qido(clients[n], servers[n][1], f"PatientID={pids[rnd]}")
                res[n]["pid"].append(took)
                counts[n]["pid"].append(c)
                took, c = qido(clients[n], servers[n][1], DATE_QUERY)
                res[n]["date"].append(took)
                counts[n]["date"].append(c)
        for kind in ("pid", "date"):
            if counts["minipacs"][kind] != counts["orthanc"][kind]:
                print(f"WARNING: {kind} match counts differ: {counts}", flush=True)
        spy = None
        if args.py_spy:  # collapsed stacks (--format raw), all threads, idle frames dropped
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--format",
                    "raw",
                    "--threads",
                    "-r",
                    "250",
                    "-o",
                    str(args.py_spy),
                    "-p",
                    str(servers["minipacs"][0].pid),
                ]
            )
            time.sleep(1.0)
        for rnd in range(args.wado_rounds):
            order = names[rnd % 2 :] + names[: rnd % 2]
            for n in order:
                cpu0 = cpu_seconds(servers[n][0].pid)
                took, nbytes, parts = wado(clients[n], servers[n][1], ct_uid)
                cpu = cpu_seconds(servers[n][0].pid) - cpu0
                if parts != expected:
                    raise RuntimeError(f"{n} WADO-RS returned {parts} parts, expected {expected}")
                res[n]["wado"].append((took, nbytes))
                res[n].setdefault("wado_cpu", []).append(cpu)
                print(
                    f"WADO round {rnd + 1} {n}: {took:.2f} s, {nbytes / took / 1e6:.0f} MB/s, server CPU {cpu:.2f} s",
                    flush=True,
                )
        if spy is not None:
            stop(spy)
        for c in clients.values():
            c.close()
    finally:
        for proc, _root in servers.values():
            stop(proc)
        stop_all()

    out: dict[str, Any] = {"machine": machine_info(), "info": info, "counts": counts, "rounds": res}
    med = {
        n: {
            "pid_ms": median(res[n]["pid"]) * 1000,
            "date_ms": median(res[n]["date"]) * 1000,
            "wado_s": median(t for t, _ in res[n]["wado"]),
            "wado_mbs": median(b / t / 1e6 for t, b in res[n]["wado"]),
            "wado_cpu_s": median(res[n].get("wado_cpu", [])),
        }
        for n in names
    }
    ratio = {  # >1 means minipacs faster
        "pid": med["orthanc"]["pid_ms"] / med["minipacs"]["pid_ms"],
        "date": med["orthanc"]["date_ms"] / med["minipacs"]["date_ms"],
        "wado": med["orthanc"]["wado_s"] / med["minipacs"]["wado_s"],
    }
    per_round = {
        "pid": [o / m for m, o in zip(res["minipacs"]["pid"], res["orthanc"]["pid"], strict=True)],
        "date": [o / m for m, o in zip(res["minipacs"]["date"], res["orthanc"]["date"], strict=True)],
        "wado": [o[0] / m[0] for m, o in zip(res["minipacs"]["wado"], res["orthanc"]["wado"], strict=True)],
    }
    out.update(median=med, ratio_of_medians=ratio, per_round=per_round)
    print(
        f"\n{args.studies} studies (+ CT study of {expected}); QIDO {args.qido_rounds} rounds, "
        f"WADO {args.wado_rounds} rounds; ratio = Orthanc time / minipacs time"
    )
    print("| measure | minipacs | Orthanc | ratio of medians | median per-round ratio |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| QIDO PatientID | {med['minipacs']['pid_ms']:.1f} ms | {med['orthanc']['pid_ms']:.1f} ms | "
        f"{ratio['pid']:.2f}x | {median(per_round['pid']):.2f}x |"
    )
    print(
        f"| QIDO StudyDate month, limit=100 | {med['minipacs']['date_ms']:.1f} ms | "
        f"{med['orthanc']['date_ms']:.1f} ms | {ratio['date']:.2f}x | {median(per_round['date']):.2f}x |"
    )
    print(
        f"| WADO-RS study | {med['minipacs']['wado_s']:.2f} s ({med['minipacs']['wado_mbs']:.0f} MB/s) | "
        f"{med['orthanc']['wado_s']:.2f} s ({med['orthanc']['wado_mbs']:.0f} MB/s) | {ratio['wado']:.2f}x | "
        f"{median(per_round['wado']):.2f}x |"
    )
    print(
        f"WADO-RS server CPU per request (median): minipacs {med['minipacs']['wado_cpu_s']:.2f} s, "
        f"Orthanc {med['orthanc']['wado_cpu_s']:.2f} s"
    )
    print(
        "match counts (median): PatientID",
        median(counts["minipacs"]["pid"]),
        "/",
        median(counts["orthanc"]["pid"]),
        "; date",
        median(counts["minipacs"]["date"]),
        "/",
        median(counts["orthanc"]["date"]),
    )
    print(json.dumps({"info": info, "per_round": per_round}, indent=1))
    (WORK / "results_dicomweb.json").write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
