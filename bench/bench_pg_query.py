"""C-FIND on PostgreSQL at 100,000 studies / 1,000,000 instances, end to end with a counting SCU.

Issue 11's targets: exact PatientID <= 5 ms, PatientName prefix <= 10 ms, one-month StudyDate
range (~550 matches) <= 40 ms.

The index is filled by bulk SQL in a fresh database (``INSERT ... SELECT FROM generate_series``
through the schema of index/schema.py, at head, so the storage counters' triggers run too), not by
C-STORE: a million instances sent one by one would take hours on this machine and measure ingest,
which bench_store.py does. No files: every key asked for is an index column. Then ``minipacs
serve`` runs on that database and our C-FIND SCU (bench_find.py ``timed``: it counts the Pending
responses, each must carry an identifier) asks in ONE association; median of ``--rounds`` queries
with random values, after a warm-up round. ``--without-pattern-indexes`` drops migration 0014's
``text_pattern_ops`` and trigram indexes first: the "before" of the name wildcards.

  python bench/bench_pg_query.py [--studies 100000] [--instances-per-study 10] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import (
    WORK,
    free_port,
    machine_info,
    pg_create_database,
    pg_drop_database,
    start_minipacs,
    stop,
)
from bench_find import RETURN_KEYS, SURNAMES, _month, timed
from sqlalchemy import create_engine

from minipacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT_FIND
from minipacs.index.database import upgrade_schema
from minipacs.net.association import AssociationSettings, build_rq, connect
from minipacs.net.dul import Timeouts

DATABASE = "minipacs_bench_pg_query"
PATTERN_INDEXES = (
    "ix_patients_patient_name_norm_trgm",
    "ix_patients_patient_name_norm_pattern",
    "ix_patients_patient_id_pattern",
    "ix_studies_referring_physician_name_norm_pattern",
    "ix_studies_accession_number_pattern",
)
SERIES_PER_STUDY = 2
TARGETS = {"exact PatientID": 5.0, "PatientName prefix": 10.0, "one-month StudyDate range": 40.0}


def _surname_sql() -> str:
    """SURNAMES[g % 10] in SQL."""
    names = ", ".join(f"'{s}'" for s in SURNAMES)
    return f"(ARRAY[{names}])[mod(g, {len(SURNAMES)}) + 1]"


def fill(url: str, studies: int, patients: int, per_study: int) -> dict[str, float]:
    """Patients, studies over 15 years, SERIES_PER_STUDY series each and ``per_study`` instances per
    study, by set-based SQL; (seconds per table)."""
    engine = create_engine(url)
    upgrade_schema(engine)
    took: dict[str, float] = {}
    per_series = max(per_study // SERIES_PER_STUDY, 1)
    statements = {
        "patients": f"""INSERT INTO patients (id, patient_key, patient_id, issuer_of_patient_id, patient_name,
            patient_name_norm, patient_birth_date, patient_birth_date_raw, patient_sex, created_at)
            SELECT g + 1, 'PID' || lpad(g::text, 7, '0'), 'PID' || lpad(g::text, 7, '0'), '',
                   {_surname_sql()} || lpad(g::text, 6, '0') || '^GIVEN' || mod(g, 97),
                   lower({_surname_sql()} || lpad(g::text, 6, '0') || '^GIVEN' || mod(g, 97)),
                   DATE '1950-01-01', '19500101', 'O', now()
            FROM generate_series(0, {patients - 1}) g""",
        # study dates: a fixed scramble of 15 years of days (bench_find.py draws them at random)
        "studies": f"""INSERT INTO studies (id, study_instance_uid, patient_pk, study_date, study_date_raw,
            study_time, study_time_raw, accession_number, study_id, study_description,
            referring_physician_name, referring_physician_name_norm, created_at, updated_at)
            SELECT g + 1, '1.2.826.0.1.3680043.10.9.' || (g + 1), mod(g, {patients}) + 1, d, to_char(d, 'YYYYMMDD'),
                   TIME '10:15', '101500', 'ACC' || lpad(g::text, 8, '0'), '1', 'CT HEAD', '', '', now(), now()
            FROM (SELECT g, DATE '2010-01-01' + mod(g::bigint * 7919, 5475)::int AS d
                  FROM generate_series(0, {studies - 1}) g) s""",
        "series": f"""INSERT INTO series (id, series_instance_uid, study_pk, modality, series_number,
            series_description, body_part_examined, series_date, series_date_raw, created_at)
            SELECT st.id * {SERIES_PER_STUDY} + k, st.study_instance_uid || '.' || (k + 1), st.id,
                   CASE WHEN k = 0 THEN 'CT' ELSE 'SR' END, k + 1, '', '', st.study_date, st.study_date_raw, now()
            FROM studies st CROSS JOIN generate_series(0, {SERIES_PER_STUDY - 1}) k""",
        "instances": f"""INSERT INTO instances (id, sop_instance_uid, series_pk, sop_class_uid, instance_number,
            number_of_frames, rows, columns, transfer_syntax_uid, blob_key, size, received_at, origin_kind,
            calling_aet, called_aet, peer_host)
            SELECT se.id * {per_series} + i, se.series_instance_uid || '.' || (i + 1), se.id,
                   '1.2.840.10008.5.1.4.1.1.2', i + 1, NULL, 512, 512, '1.2.840.10008.1.2.1',
                   'x/' || se.series_instance_uid || '.' || (i + 1) || '.dcm', 1, now(), 'bench', '', '', ''
            FROM series se CROSS JOIN generate_series(0, {per_series - 1}) i""",
    }
    with engine.begin() as conn:
        for table, sql in statements.items():
            start = time.perf_counter()
            conn.exec_driver_sql(sql)
            took[table] = time.perf_counter() - start
            print(f"  {table}: {took[table]:.1f} s", flush=True)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    return took


async def measure(port: int, studies: int, patients: int, rounds: int) -> dict[str, tuple[float, float, float]]:
    """(median ms, 90th percentile ms, median matches) per query kind, all in one association."""
    settings = AssociationSettings(ae_title="BENCH", timeouts=Timeouts(acse=30, dimse=600, idle=600))
    rq = build_rq("BENCH", "MINIPACS", [(STUDY_ROOT_FIND, [EXPLICIT_VR_LITTLE_ENDIAN])], settings)
    assoc = await connect("127.0.0.1", port, rq, settings)
    rng = random.Random(7)

    def prefix() -> list[str]:
        p = rng.randrange(patients)
        name = f"{SURNAMES[p % len(SURNAMES)]}{p:06d}"
        return [f"PatientName={name[:-1]}*"]  # the last digit open: one or two patients

    def inner() -> list[str]:
        p = rng.randrange(patients)
        name = f"{SURNAMES[p % len(SURNAMES)]}{p:06d}"
        return [f"PatientName=*{name[2:-1]}*"]  # no target: served by pg_trgm when it is there

    cases = {
        "exact PatientID": lambda: [f"PatientID=PID{rng.randrange(patients):07d}"],
        "PatientName prefix": prefix,
        "PatientName inner wildcard": inner,
        "one-month StudyDate range": lambda: [_month(rng)],
    }
    results: dict[str, tuple[float, float, float]] = {}
    for name, make in cases.items():
        times, counts = [], []
        for n in range(rounds + 1):
            keys = make()
            override = {k.split("=")[0] for k in keys}
            took, count, status = await timed(assoc, keys + [k for k in RETURN_KEYS if k not in override])
            if status != 0:
                raise RuntimeError(f"{name}: C-FIND ended with status {status:#06x}")
            if n:  # the first one warms the caches
                times.append(took * 1000)
                counts.append(count)
        times.sort()
        results[name] = (statistics.median(times), times[int(len(times) * 0.9) - 1], statistics.median(counts))
    await assoc.release()
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=0, help="default: studies / 2")
    parser.add_argument("--instances-per-study", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="reuse the database of the last run")
    parser.add_argument("--without-pattern-indexes", action="store_true", help="drop migration 0014's indexes")
    args = parser.parse_args()
    patients = args.patients or max(args.studies // 2, 1)
    work = WORK / "pg_query"
    work.mkdir(parents=True, exist_ok=True)
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}"
    filled: dict[str, float] = {}
    if not args.keep:
        url = pg_create_database(DATABASE)
        print(
            f"filling {DATABASE}: {args.studies} studies, {patients} patients, "
            f"{args.studies * args.instances_per_study} instances",
            flush=True,
        )
        filled = fill(url, args.studies, patients, args.instances_per_study)
    if args.without_pattern_indexes:
        engine = create_engine(url)
        with engine.begin() as conn:
            for index in PATTERN_INDEXES:
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index}")
        engine.dispose()
    port = free_port()
    proc = start_minipacs(
        work / "data",
        port,
        work / "server.log",
        {"MINIPACS_INDEX_URL": url, "MINIPACS_FSYNC": "false", "MINIPACS_LOG_LEVEL": "WARNING"},
    )
    try:
        results = asyncio.run(measure(port, args.studies, patients, args.rounds))
    finally:
        stop(proc)
        if args.without_pattern_indexes:
            pg_drop_database(DATABASE)  # its indexes are gone: never --keep it
    label = "without pattern indexes" if args.without_pattern_indexes else "with migration 0014"
    print(
        f"\n| query ({args.studies} studies, {args.studies * args.instances_per_study} instances, "
        f"{label}) | median | p90 | matches | target |"
    )
    print("|---|---|---|---|---|")
    for name, (median, p90, count) in results.items():
        target = TARGETS.get(name)
        verdict = "-" if target is None else f"<= {target:g} ms: {'met' if median <= target else '**missed**'}"
        print(f"| {name} | {median:.1f} ms | {p90:.1f} ms | {count:g} | {verdict} |")
    (work / "results.json").write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": machine_info(),
                "studies": args.studies,
                "patients": patients,
                "instances": args.studies * args.instances_per_study,
                "fill_seconds": filled,
                "pattern_indexes": not args.without_pattern_indexes,
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
