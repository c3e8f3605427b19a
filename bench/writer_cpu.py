#!/usr/bin/env python3
"""CPU of the archive's index-writer thread per small instance, in process, A/B.

``thread_cpu.py`` measures a whole ``minipacs serve`` behind storescu; the writer thread's share is
mixed there with the event loop, the staging pool and the deferred PS3.18 metadata. This drives
``Archive.ingest`` directly, one instance at a time (as storescu on one association: the writer
sees batches of one), with instances received into memory (the C-STORE path for a small one), on
SQLite with fsync on (the intake log), and reads the writer thread's on-CPU time from
``/proc/self/task/TID/schedstat`` around the run. Two source trees, rounds interleaved, each round a
fresh process and data folder:

  python bench/writer_cpu.py --a /path/to/old/src --b src [--count 2000] [--rounds 8] [--index-url URL]

``--index-url postgresql+psycopg://...``: a PostgreSQL index instead (each round drops and recreates
the database named in it). The data set is bench/work/thread-cpu-<count> (thread_cpu.py's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _schedstat(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/schedstat") as fh:
        return int(fh.read().split()[0])


def _ticks(tid: int) -> tuple[int, int]:
    with open(f"/proc/self/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


async def _one(data_dir: Path, files: list[Path], index_url: str) -> dict[str, float]:
    from minipacs.bootstrap import open_archive
    from minipacs.config import Settings
    from minipacs.core.model import Origin
    from minipacs.core.staging import locate_dataset

    items = []
    for path in files:
        with open(path, "rb") as fh:
            offset, syntax = locate_dataset(fh, path.name)
            fh.seek(0)
            raw = fh.read()
        from pydicom import dcmread

        ds = dcmread(path, stop_before_pixels=True)
        items.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, raw[offset:]))
    settings = Settings(data_dir=data_dir, index_url=index_url, intake_checkpoint_seconds=3600)
    archive = await open_archive(settings)
    origin = Origin("dicom", "STORESCU", "MINIPACS", "127.0.0.1")
    try:
        # warm-up: statements compiled, caches filled
        warm = len(items) // 10
        for sop_class, sop, syntax, dataset in items[:warm]:
            staging = archive.open_staging(sop_class, sop, syntax, "STORESCU", in_memory=True)
            staging.write(dataset)
            await archive.ingest(staging.finish(), origin)
        tid = archive._writer.native_id
        assert tid is not None
        ns0, (u0, s0) = _schedstat(tid), _ticks(tid)
        started = time.perf_counter()
        for sop_class, sop, syntax, dataset in items[warm:]:
            staging = archive.open_staging(sop_class, sop, syntax, "STORESCU", in_memory=True)
            staging.write(dataset)
            await archive.ingest(staging.finish(), origin)
        took = time.perf_counter() - started
        ns1, (u1, s1) = _schedstat(tid), _ticks(tid)
    finally:
        await archive.close()
    n = len(items) - warm
    tck = os.sysconf("SC_CLK_TCK")
    return {
        "writer_us": (ns1 - ns0) / 1e3 / n,
        "user_us": (u1 - u0) / tck * 1e6 / n,
        "sys_us": (s1 - s0) / tck * 1e6 / n,
        "rate": n / took,
    }


def _reset_pg(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{u.database}"'))
    admin.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=Path, help="the 'before' src/ folder")
    ap.add_argument("--b", type=Path, help="the 'after' src/ folder")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--index-url", default="")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child: one run into this data folder
    ap.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)  # the child: the first N files
    args = ap.parse_args(argv)
    data = HERE / "work" / f"thread-cpu-{args.count}"
    if args.one is not None:
        files = sorted(data.rglob("*.dcm"))[: args.limit or None]
        if args.index_url.startswith("postgresql"):
            _reset_pg(args.index_url)
        print(json.dumps(asyncio.run(_one(args.one, files, args.index_url))))
        return 0
    if args.a is None or args.b is None:
        ap.error("--a and --b are needed")
    sys.path.insert(0, str(HERE))
    from _common import machine_info, remove_runs, run_folder
    from gen_data import MR_IMAGE_STORAGE, generate

    info = machine_info()
    print(f"{info['date']}; {info['cpu']} x {info['nproc']}; load {info['loadavg']}", flush=True)
    generate(data, args.count, "MR", MR_IMAGE_STORAGE, 64, 64, 7)
    targets = [("A", args.a.resolve()), ("B", args.b.resolve())]
    results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    try:
        for rnd in range(args.rounds):
            for name, src in targets if rnd % 2 == 0 else targets[::-1]:
                env = dict(os.environ, PYTHONPATH=str(src))
                cmd = [sys.executable, __file__, "--one", str(run_folder(f"writer-{name}-{rnd}") / "data")]
                cmd += ["--count", str(args.count), "--index-url", args.index_url]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                results[name].append(r)
                print(
                    f"round {rnd} {name}: writer {r['writer_us']:6.1f} us/inst (user {r['user_us']:.0f}, "
                    f"sys {r['sys_us']:.0f})  {r['rate']:6.0f}/s",
                    flush=True,
                )
    finally:
        remove_runs()
    print()
    for name, runs in results.items():
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(
            f"{name}: median writer {med['writer_us']:.1f} us/inst (user {med['user_us']:.0f}, "
            f"sys {med['sys_us']:.0f}); {med['rate']:.0f}/s"
        )
    pairs = list(zip(results["A"], results["B"], strict=True))
    for key in ("writer_us", "rate"):
        ratios = [b[key] / a[key] for a, b in pairs]
        listed = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"B/A {key:9s} per round: {listed}; median {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
