#!/usr/bin/env python3
"""Nagle vs delayed ACK: a pynetdicom client's round trips against ``minipacs serve``.

pynetdicom (like DCMTK without ``TCP_NODELAY=1``) keeps Nagle's algorithm on and writes a
request's command and its dataset as separate P-DATA-TF PDUs. The second write waits until
the first is acknowledged; a receiver that delays its ACK (Linux: up to ~40 ms) while it
has nothing to send adds that wait to every C-STORE and C-FIND. This script measures the
round trip of C-ECHO (command only), C-STORE of a 64x64 CT and C-FIND (STUDY, one match)
on one association, with the client's socket as pynetdicom leaves it (Nagle on) and with
``TCP_NODELAY`` set on it, against one fresh ``minipacs serve`` on 127.0.0.1.

``--server-src DIR`` runs the server from another source tree (PYTHONPATH), for an A/B of a
server change (e.g. /work/main/src before a fix). Results: printed, and JSON in
bench/work/nagle.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, free_port, machine_info, start_minipacs, stop

EXPLICIT = "1.2.840.10008.1.2.1"


def make_ct(path: Path) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "NAGLE1", "Nagle^Test", "CT"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes(64 * 64 * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def measure(port: int, small: Path, n: int, nodelay: bool) -> dict[str, list[float]]:
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

    ae = AE(ae_title="NAGLESCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, EXPLICIT)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS")
    if not assoc.is_established:
        raise RuntimeError("association refused")
    sock = assoc.dul.socket.socket
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    template = dcmread(small)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = template.PatientID
    query.StudyInstanceUID = ""
    out: dict[str, list[float]] = {"echo": [], "store": [], "find": []}
    for i in range(n):
        t0 = time.perf_counter()
        st = assoc.send_c_echo()
        out["echo"].append(time.perf_counter() - t0)
        assert st and st.Status == 0, st
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        t0 = time.perf_counter()
        st = assoc.send_c_store(ds)
        out["store"].append(time.perf_counter() - t0)
        assert st and st.Status == 0, st
        t0 = time.perf_counter()
        final = None
        for status, _ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            final = status
        out["find"].append(time.perf_counter() - t0)
        assert final and final.Status == 0, final
    assoc.release()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=40, help="rounds of echo+store+find per client mode (default 40)")
    ap.add_argument("--server-src", default="", help="PYTHONPATH for the server (default: as this process)")
    ap.add_argument("--fsync", default="true", help="MINIPACS_FSYNC for the server (default true)")
    args = ap.parse_args()
    run = WORK / "nagle"
    small = make_ct(run / "small.dcm")
    port = free_port()
    env = {"MINIPACS_LOG_LEVEL": "WARNING", "MINIPACS_FSYNC": args.fsync}
    if args.server_src:
        env["PYTHONPATH"] = args.server_src
    server = start_minipacs(run / "data", port, run / "server.log", env)
    result: dict[str, Any] = {"machine": machine_info(), "server_src": args.server_src or "(this)", "modes": {}}
    try:
        measure(port, small, 3, False)  # warm up (imports, first index writes)
        for mode, nodelay in (("nagle-on", False), ("nodelay", True), ("nagle-on again", False)):
            samples = measure(port, small, args.n, nodelay)
            row = {}
            for op, values in samples.items():
                ms = sorted(v * 1000 for v in values)
                row[op] = {
                    "n": len(ms),
                    "p50": round(statistics.median(ms), 1),
                    "p90": round(ms[int(0.9 * (len(ms) - 1))], 1),
                    "max": round(ms[-1], 1),
                }
            result["modes"][mode] = row
            print(
                f"{mode:15s} "
                + "  ".join(
                    f"{op} p50 {r['p50']:6.1f} p90 {r['p90']:6.1f} max {r['max']:6.1f} ms" for op, r in row.items()
                ),
                flush=True,
            )
    finally:
        stop(server)
    (WORK / "nagle.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
