"""C-FIND at study level on an index of 100,000 studies, inside one association.

The index is built directly in SQLite (bulk inserts into the tables of
index/schema.py; no files: the keys asked for are all indexed or computed),
then `minipacs serve` runs on it and our C-FIND SCU asks, in ONE association:
exact PatientID, exact AccessionNumber, a PatientName wildcard, a one-month
StudyDate range (median of N rounds each), and an unfiltered query whose
responses/s is the streaming rate.

  python bench/bench_find.py [--studies 100000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
# the sources measured first on sys.path: MINIPACS_BENCH_SRC's or this checkout's (_common.SRC), for
# this script's SCU too -- bench_pg_query.py's "before" with another tree's src measured that tree's
# server against this checkout's SCU while this put ../src first unconditionally
import _common  # noqa: F401

from minipacs.dicom.identifier import encode_identifier
from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT_FIND, transfer_syntax
from minipacs.dicom.values import normalise_name
from minipacs.index.database import upgrade_schema
from minipacs.index.schema import Instance, Patient, Series, Study
from minipacs.net.association import AssociationSettings, build_rq, connect
from minipacs.net.dimse import Command
from minipacs.net.dul import Timeouts
from minipacs.net.memory import BytesSink
from minipacs.services.find_scu import build_identifier, find

RETURN_KEYS = [
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "StudyInstanceUID",
]
EXPLICIT_LE = transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN)
assert EXPLICIT_LE is not None
SURNAMES = ["SMITH", "JONES", "MULLER", "GARCIA", "ROSSI", "DUBOIS", "NOWAK", "SILVA", "KIM", "NGUYEN"]


def build_index(data: Path, studies: int) -> None:
    data.mkdir(parents=True, exist_ok=True)
    db = data / "index.sqlite3"
    if db.exists():
        db.unlink()
    url = f"sqlite:///{db}"
    engine = create_engine(url)
    upgrade_schema(engine)
    rng = random.Random(3)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    patients = max(studies // 5, 1)
    with engine.begin() as conn:
        rows: list[dict[str, Any]] = []
        for p in range(patients):
            name = f"{SURNAMES[p % len(SURNAMES)]}{p:06d}^GIVEN{p % 97}"
            rows.append(
                {
                    "id": p + 1,
                    "patient_id": f"PID{p:07d}",
                    "patient_key": f"PID{p:07d}",  # the Patient ID itself when there is one (index/repository.py)
                    "issuer_of_patient_id": "",
                    "patient_name": name,
                    "patient_name_norm": normalise_name(name),
                    "patient_birth_date": dt.date(1950, 1, 1),
                    "patient_birth_date_raw": "19500101",
                    "patient_sex": "O",
                    "created_at": now,
                }
            )
        conn.execute(insert(Patient), rows)
        first = dt.date(2010, 1, 1)
        for start in range(0, studies, 20000):
            study_rows, series_rows, instance_rows = [], [], []
            for s in range(start, min(start + 20000, studies)):
                day = first + dt.timedelta(days=rng.randrange(365 * 15))
                uid = f"1.2.826.0.1.3680043.10.9.{s + 1}"
                study_rows.append(
                    {
                        "id": s + 1,
                        "study_instance_uid": uid,
                        "patient_pk": s % patients + 1,
                        "study_date": day,
                        "study_date_raw": day.strftime("%Y%m%d"),
                        "study_time": dt.time(10, 15),
                        "study_time_raw": "101500",
                        "accession_number": f"ACC{s:08d}",
                        "study_id": "1",
                        "study_description": "CT HEAD",
                        "referring_physician_name": "",
                        "referring_physician_name_norm": "",
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                series_rows.append(
                    {
                        "id": s + 1,
                        "series_instance_uid": uid + ".1",
                        "study_pk": s + 1,
                        "modality": "CT" if s % 3 else "MR",
                        "series_number": 1,
                        "series_description": "",
                        "body_part_examined": "",
                        "series_date": day,
                        "series_date_raw": day.strftime("%Y%m%d"),
                        "created_at": now,
                    }
                )
                instance_rows.append(
                    {
                        "id": s + 1,
                        "sop_instance_uid": uid + ".1.1",
                        "series_pk": s + 1,
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "instance_number": 1,
                        "number_of_frames": None,
                        "rows": 512,
                        "columns": 512,
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "blob_key": f"x/{uid}.dcm",
                        "size": 1,
                        "received_at": now,
                        "origin_kind": "bench",
                        "calling_aet": "",
                        "called_aet": "",
                        "peer_host": "",
                    }
                )
            conn.execute(insert(Study), study_rows)
            conn.execute(insert(Series), series_rows)
            conn.execute(insert(Instance), instance_rows)
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()


async def timed(assoc: Any, keys: list[str], decode: bool = False) -> tuple[float, int, int]:
    """One C-FIND: (seconds until the final response, matches, final status).

    By default the SCU only counts the Pending responses (each must carry an
    identifier), so the time is the server's; ``decode`` also parses every
    identifier with pydicom, as ``minipacs find`` does.
    """
    # "Keyword=value" specs (the CLI's -k) -> the structured keys the outbound path takes
    ident = build_identifier({k: v for k, _, v in (spec.partition("=") for spec in keys)}, "STUDY")
    start = time.perf_counter()
    count, status = 0, -1
    if decode:
        async for code, _ds, _cmd in find(assoc, STUDY_ROOT_FIND, ident):
            if code in (0xFF00, 0xFF01):
                count += 1
            else:
                status = code
        return time.perf_counter() - start, count, status
    ctx = assoc.context_for(STUDY_ROOT_FIND)
    rq = Command.make(
        "C-FIND-RQ",
        has_dataset=True,
        MessageID=assoc.next_message_id(),
        Priority=0,
        AffectedSOPClassUID=STUDY_ROOT_FIND,
    )
    async for rsp in assoc.request(ctx.context_id, rq, encode_identifier(ident, EXPLICIT_LE)):
        code = int(rsp.command.get("Status", -1))
        if code in (0xFF00, 0xFF01):
            if not (isinstance(rsp.dataset, BytesSink) and rsp.dataset.getvalue()):
                raise RuntimeError("a Pending C-FIND response without an identifier")
            count += 1
        else:
            status = code
    return time.perf_counter() - start, count, status


async def measure(port: int, studies: int, rounds: int) -> dict[str, Any]:
    settings = AssociationSettings(ae_title="BENCH", timeouts=Timeouts(acse=30, dimse=600, idle=600))
    rq = build_rq("BENCH", "MINIPACS", [(STUDY_ROOT_FIND, [EXPLICIT_VR_LITTLE_ENDIAN])], settings)
    assoc = await connect("127.0.0.1", port, rq, settings)
    rng = random.Random(7)
    patients = max(studies // 5, 1)
    returned = [k for k in RETURN_KEYS]
    cases = {
        "exact PatientID": lambda: [f"PatientID=PID{rng.randrange(patients):07d}"],
        "exact AccessionNumber": lambda: [f"AccessionNumber=ACC{rng.randrange(studies):08d}"],
        "PatientName wildcard": lambda: [
            f"PatientName={SURNAMES[rng.randrange(10)].lower()}{rng.randrange(patients // 10):05d}*"
        ],
        "one-month StudyDate range": lambda: [_month(rng)],
        "one-month StudyDate range, SCU decodes": lambda: [_month(rng)],
    }
    results: dict[str, Any] = {}
    for name, make in cases.items():
        times, counts = [], []
        for _ in range(rounds):
            keys = make()
            override = {k.split("=")[0] for k in keys}
            took, count, status = await timed(
                assoc, keys + [k for k in returned if k not in override], decode=name.endswith("SCU decodes")
            )
            assert status == 0, hex(status)
            times.append(took)
            counts.append(count)
        results[name] = (statistics.median(times) * 1000, statistics.median(counts))
    took, count, status = await timed(assoc, returned)
    assert status == 0, hex(status)
    results["unfiltered"] = (took, count)
    await assoc.release()
    return results


def _month(rng: random.Random) -> str:
    year, month = 2010 + rng.randrange(15), 1 + rng.randrange(12)
    end = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return f"StudyDate={year}{month:02d}01-{year}{month:02d}{end:02d}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="reuse an index already built")
    args = parser.parse_args()
    data = BENCH / "work" / "find" / "data"
    start = time.perf_counter()
    if not (args.keep and (data / "index.sqlite3").exists()):
        build_index(data, args.studies)
    print(f"index of {args.studies} studies built in {time.perf_counter() - start:.1f} s", flush=True)
    sys.path.insert(0, str(BENCH))
    from _common import free_port, listening

    port = free_port()
    log = open(BENCH / "work" / "find" / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minipacs.cli.main",
            "serve",
            "--data",
            str(data),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            "PYTHONPATH": str(BENCH.parent / "src"),
            "PATH": "/usr/bin:/bin",
            "MINIPACS_FSYNC": "false",
            "MINIPACS_LOG_LEVEL": "WARNING",
        },
    )
    try:
        deadline = time.monotonic() + 60
        while not listening(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("minipacs serve did not start; see bench/work/find/server.log")
            time.sleep(0.1)
        results = asyncio.run(measure(port, args.studies, args.rounds))
    finally:
        proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    targets = {
        "exact PatientID": 10,
        "exact AccessionNumber": 10,
        "PatientName wildcard": 50,
        "one-month StudyDate range": 50,
        "one-month StudyDate range, SCU decodes": 50,
    }
    print(f"\n| query ({args.studies} studies, {args.rounds} rounds) | median | matches | responses/s | target |")
    print("|---|---|---|---|---|")
    for name, target in targets.items():
        ms, count = results[name]
        print(f"| {name} | {ms:.1f} ms | {count:g} | {count / ms * 1000:.0f} | <= {target} ms |")
    took, count = results["unfiltered"]
    print(f"| unfiltered, streaming | {took:.1f} s | {count} | {count / took:.0f} | >= 5000/s |")
    (BENCH / "work" / "results_find.json").write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "studies": args.studies,
                "rounds": args.rounds,
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
