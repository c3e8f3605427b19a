#!/usr/bin/env python3
"""C-STORE throughput: minipacs vs Orthanc vs DCMTK storescp, same data, same sender, same run.

One command reproduces the table of issue 10:

  python bench/bench_store.py --servers minipacs,minipacs-pg,orthanc,orthanc-pg,storescp \\
      --sets small,ct,small4 --rounds 3
  python bench/bench_store.py --quick        # 1 round, 100 small / 40 CT instances: a smoke test

(run it with the project's Python, e.g. ``.venv/bin/python``; the minipacs measured is the one in
this checkout's ``src/``, see _common.py.)

Sets (generated on first use under bench/work/, see gen_data.py ``store_sets``):
  small   500 x 64x64x16-bit MR (~9.5 kB), one association
  ct      200 x 512x512x16-bit CT (~0.5 MB), one association
  small4  the small set over 4 parallel associations: 4 storescu processes at once, each
          sending a quarter (subfolders p0..p3)

Sender: ``/usr/bin/storescu -xe +sd +r -aec AET 127.0.0.1 PORT DIR`` (explicit VR LE proposed,
as the files are). Wall time from the first storescu start to the last exit -> instances/s.

Servers (a fresh one each round, fresh folders, the order rotated every round):
  minipacs          ``minipacs serve`` (fsync on, SQLite index in the data folder)
  minipacs-pg       the same with ``index_url`` on a fresh PostgreSQL database (127.0.0.1:5432,
                    user postgres, trust), created for the run and dropped after it
  orthanc           /usr/sbin/Orthanc, generated JSON config (storage and SQLite index in the run
                    folder, RemoteAccessAllowed false, HTTP on a free port, no plugins; defaults
                    otherwise, e.g. SyncStorageArea true, StorageCompression off)
  orthanc-pg        the same with the Debian orthanc-postgresql index plugin on a fresh database
                    (EnableStorage false: the files stay on disk, as for minipacs-pg)
  storescp          ``storescp -od OUT +B PORT``, plain (one association at a time; small4's other
                    associations wait in the listen queue). DCMTK 3.6.7 has no fsync option: it
                    acknowledges from the page cache.
  extra, on request: ``storescp+sync`` (``-xcr "/usr/bin/sync -d #p/#f" -xs``: fdatasync of each
                    file in a child process, after the response) and ``minipacs-nofsync`` (fsync off).

Every DCMTK program and Orthanc runs with ``TCP_NODELAY=1`` (Nagle stays on without it).

Checked after every run: storescu exit 0 and the stored count (storescp: files in its folder;
the others: an IMAGE-level C-FIND (``findscu``) for the set's series, retried for up to 5 s).
Server CPU: utime+stime (+cutime+cstime: children that exited) from /proc/PID/stat, from
before the first storescu to (a) the last storescu exit and (b) the moment the server's CPU
stays flat (at most one clock tick per 0.1 s) for 1.2 s (at most 15 s; work done after the
acknowledgements counts, minipacs's PS3.18 metadata too, which waits for a 0.5 s pause). The
PostgreSQL server's own CPU is not included (it is not the archive's process).

``sync`` (whole system) runs between runs, untimed. Any error stops the benchmark loudly; servers
and databases are cleaned up on errors, Ctrl-C and SIGTERM.
Results: printed (markdown), JSON in bench/work/results_store.json (report.py renders it too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CLK_TCK,
    FINDSCU,
    ORTHANC,
    ORTHANC_PG_INDEX,
    STORESCP,
    STORESCU,
    WORK,
    count_files,
    cpu_seconds,
    free_port,
    fsync_probe,
    machine_info,
    orthanc_pg_config,
    peer_env,
    pg_create_database,
    pg_drop_database,
    pg_table_count,
    remove_runs,
    run_folder,
    start_minipacs,
    start_orthanc,
    start_storescp,
    stop,
    stop_all,
    sync_disk,
)
from gen_data import STORE_PARTS, generate_kind, store_sets

SERVERS = ("minipacs", "minipacs-pg", "orthanc", "orthanc-pg", "storescp")
#: Not run by default: the pessimistic "storescp with fsync" and minipacs with fsync off.
EXTRA_SERVERS = ("storescp+sync", "minipacs-nofsync")
#: set name -> (data set, associations)
SETS = {"small": ("small", 1), "ct": ("ct", 1), "small4": ("small", STORE_PARTS)}
#: same-round ratios reported (numerator, denominator), when both ran
RATIOS = (
    ("minipacs", "storescp"),
    ("minipacs", "orthanc"),
    ("minipacs-pg", "storescp"),
    ("minipacs-pg", "orthanc-pg"),
    ("minipacs-pg", "minipacs"),
    ("minipacs", "storescp+sync"),
    ("minipacs-nofsync", "minipacs"),
    ("minipacs-nofsync", "storescp"),
)
AET = {"minipacs": "MINIPACS", "orthanc": "ORTHANC", "storescp": "STORESCP"}
STORESCU_TIMEOUT = 600.0
FIND_RETRY_S = 5.0

#: PostgreSQL databases created and not yet dropped (dropped on the way out, whatever happens)
_DATABASES: list[str] = []


@dataclass
class DataSet:
    name: str
    folder: Path
    count: int
    associations: int
    study_uid: str
    series_uid: str
    sources: list[Path] = field(default_factory=list)


def family(server: str) -> str:
    return server.split("-")[0].split("+")[0]


def load_set(name: str, quick: bool) -> DataSet:
    base, assocs = SETS[name]
    folder, count, kind = store_sets(WORK, quick)[base]
    generate_kind(folder, count, kind)
    first = min(folder.rglob("*.dcm"))
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    if assocs == 1:
        sources = [folder]
    else:
        sources = sorted(p for p in folder.iterdir() if p.is_dir())
        if len(sources) != assocs:
            raise RuntimeError(f"{folder} has {len(sources)} subfolders, {name} needs {assocs}")
    return DataSet(name, folder, count, assocs, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sources)


def warm(data: DataSet) -> None:
    """Read every file of ``data`` once, so that it is in the page cache before the set's first run.
    The set was written by an earlier run, and runs of other sets in between evict it: the first
    server of a set's first round was measured with storescu reading its input from the disk, which
    the others were not (session 13: the first round of the small set 518/s, the next two 802-805/s)."""
    for path in data.folder.rglob("*.dcm"):
        with open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass


def send(data: DataSet, aec: str, port: int, run_dir: Path) -> float:
    """All of ``data`` to 127.0.0.1:port, one storescu per association, started together."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    start = time.perf_counter()
    try:
        for i, src in enumerate(data.sources):
            log = run_dir / f"storescu-{i}.log"
            cmd = [STORESCU, "-xe", "+sd", "+r", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port), str(src)]
            with open(log, "wb") as fh:
                procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=peer_env()), log))
        # A blocking wait returns the moment a process exits; ``wait(timeout)`` polls with sleeps of
        # up to 50 ms, which quantised every wall time to ~50 ms (a 0.2 s storescp run +-25 %).
        # The deadline is kept by a watchdog that kills the senders instead.
        watchdog = threading.Timer(STORESCU_TIMEOUT, lambda: [p.kill() for p, _ in procs])
        watchdog.start()
        try:
            for proc, log in procs:
                rc = proc.wait()
                if rc != 0:
                    raise RuntimeError(f"storescu exited with {rc}; see {log}")
            return time.perf_counter() - start
        finally:
            watchdog.cancel()
    finally:
        for proc, _log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


#: Samples (0.1 s apart) in which the server's CPU may grow by at most one clock tick before its work
#: counts as done: 1.2 s, longer than any deferred per-instance work waits to start (minipacs computes
#: PS3.18 metadata once ingest has paused for 0.5 s, core/metadata.py; that CPU is the instances' too).
SETTLE_SAMPLES = 12


def settled_cpu(pid: int, children: bool, limit: float = 15.0) -> float:
    """The server's CPU once it has stopped working (:data:`SETTLE_SAMPLES`), at most ``limit`` s."""
    tick = 1.0 / CLK_TCK
    last, flat, deadline = cpu_seconds(pid, children), 0, time.monotonic() + limit
    while flat < SETTLE_SAMPLES and time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid, children)
        flat = flat + 1 if now - last <= tick + 1e-9 else 0
        last = now
    return last


def found(data: DataSet, aec: str, port: int, run_dir: Path) -> int:
    """Instances of the set's series the server answers for (IMAGE-level C-FIND, Study Root)."""
    out = run_folder(f"{run_dir.name}-find")  # findscu -X writes a file per answer: kept until the end
    cmd = [
        FINDSCU,
        "-S",
        "-aet",
        "BENCH",
        "-aec",
        aec,
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        f"StudyInstanceUID={data.study_uid}",
        "-k",
        f"SeriesInstanceUID={data.series_uid}",
        "-k",
        "SOPInstanceUID",
        "-X",
        "-od",
        str(out),
        "127.0.0.1",
        str(port),
    ]
    with open(run_dir / "findscu.log", "ab") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=peer_env(), timeout=120).returncode
    if rc != 0:
        raise RuntimeError(f"findscu exited with {rc}; see {run_dir / 'findscu.log'}")
    return count_files(out)


def stored_count(server: str, data: DataSet, aec: str, port: int, run_dir: Path) -> int:
    if family(server) == "storescp":
        return count_files(run_dir / "out")
    deadline = time.monotonic() + FIND_RETRY_S
    while True:
        n = found(data, aec, port, run_dir)
        if n >= data.count or time.monotonic() > deadline:
            return n
        time.sleep(0.5)


def start_server(server: str, port: int, run_dir: Path, database: str | None) -> subprocess.Popen[bytes]:
    out = run_dir / "out"
    if family(server) == "minipacs":
        env = {"MINIPACS_FSYNC": "0" if server == "minipacs-nofsync" else "1"}
        if database:
            env["MINIPACS_INDEX_URL"] = pg_create_database(database)
        return start_minipacs(out, port, run_dir / "server.log", env)
    if family(server) == "orthanc":
        if database:
            pg_create_database(database)
            return start_orthanc(
                run_dir, port, free_port(), plugins=[ORTHANC_PG_INDEX], config=orthanc_pg_config(database)
            )
        return start_orthanc(run_dir, port, free_port())
    extra = ["-xcr", "/usr/bin/sync -d #p/#f", "-xs"] if server == "storescp+sync" else []
    return start_storescp(out, port, run_dir / "server.log", extra)


def start_with_retry(server: str, run_dir: Path, database: str | None) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``server`` on a free port; again on another port (3 tries) only if the port was taken
    between ``free_port()`` and the server's bind (other programs on the machine pick ports too)."""
    for attempt in range(3):
        port = free_port()
        try:
            return start_server(server, port, run_dir, database), port
        except (RuntimeError, TimeoutError) as exc:
            if "in use" not in str(exc) or attempt == 2:
                raise
            print(f"  {server}: port {port} was taken before the server bound it; trying another", flush=True)
            shutil.rmtree(run_dir / "out", ignore_errors=True)
            shutil.rmtree(run_dir / "orthanc-db", ignore_errors=True)
    raise AssertionError("unreachable")


def run_one(server: str, data: DataSet, run_dir: Path, rnd: int) -> dict[str, Any]:
    """One run in ``run_dir``, a new empty folder (:func:`_common.run_folder`); nothing is deleted."""
    aec = AET[family(server)]
    database = f"bench_{os.getpid()}_{data.name}_{rnd}_{server.replace('-', '_')}" if server.endswith("-pg") else None
    if database:
        _DATABASES.append(database)
    proc = None
    try:
        proc, port = start_with_retry(server, run_dir, database)
        if database and pg_table_count(database) == 0:
            raise RuntimeError(f"{server} is up but database {database} has no tables: is its index really there?")
        children = True
        cpu0 = cpu_seconds(proc.pid, children)
        took = send(data, aec, port, run_dir)
        cpu_exit = cpu_seconds(proc.pid, children) - cpu0
        cpu = settled_cpu(proc.pid, children) - cpu0
        stored = stored_count(server, data, aec, port, run_dir)
    finally:
        rc = stop(proc)
        if database:
            pg_drop_database(database)
            _DATABASES.remove(database)
    if stored != data.count:
        raise RuntimeError(f"{server} stored {stored} of {data.count} instances of {data.name}; see {run_dir}")
    if family(server) == "minipacs" and rc != 0:
        raise RuntimeError(f"minipacs exited with {rc} after SIGINT; see {run_dir / 'server.log'}")
    sync_disk()
    return {
        "server": server,
        "set": data.name,
        "round": rnd,
        "count": data.count,
        "associations": data.associations,
        "seconds": took,
        "per_s": data.count / took,
        "server_cpu_s": cpu,
        "server_cpu_at_exit_s": cpu_exit,
        "cpu_ms_per_instance": cpu * 1000 / data.count,
    }


def preflight(servers: list[str]) -> None:
    """Fail before anything starts if a program, plugin or PostgreSQL is missing."""
    need = [STORESCU, FINDSCU]
    if any(family(s) == "storescp" for s in servers):
        need.append(STORESCP)
    if any(family(s) == "orthanc" for s in servers):
        need.append(ORTHANC)
    if "orthanc-pg" in servers and not ORTHANC_PG_INDEX.exists():
        need.append(f"{ORTHANC_PG_INDEX} (Debian package orthanc-postgresql: `dpkg -l orthanc-postgresql`)")
    missing = [p for p in need if not Path(p.split(" ")[0]).exists()]
    if missing:
        raise SystemExit(f"bench_store: missing {', '.join(missing)}")
    if any(s.endswith("-pg") for s in servers):
        probe = f"bench_{os.getpid()}_probe"
        try:
            pg_create_database(probe)
            pg_drop_database(probe)
        except Exception as exc:
            raise SystemExit(f"bench_store: PostgreSQL at 127.0.0.1:5432 (user postgres) unusable: {exc}") from exc


def _spread(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(lo, fmt)}-{format(hi, fmt)})"


def _ratio(values: list[float]) -> str:
    med = statistics.median(values)
    return f"**{med:.2f}x**" + (f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else "")


def summarise(runs: list[dict[str, Any]], sets: list[str], servers: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for set_name in sets:
        per: dict[str, Any] = {"servers": {}, "ratios": {}}
        mine = [r for r in runs if r["set"] == set_name]
        for server in servers:
            rs = [r for r in mine if r["server"] == server]
            if not rs:
                continue
            per["servers"][server] = {
                "per_s": [r["per_s"] for r in rs],
                "median_per_s": statistics.median(r["per_s"] for r in rs),
                "cpu_ms_per_instance": [r["cpu_ms_per_instance"] for r in rs],
                "median_cpu_ms_per_instance": statistics.median(r["cpu_ms_per_instance"] for r in rs),
                "median_cpu_at_exit_ms_per_instance": statistics.median(
                    r["server_cpu_at_exit_s"] * 1000 / r["count"] for r in rs
                ),
                "count": rs[0]["count"],
                "associations": rs[0]["associations"],
            }
        for a, b in RATIOS:
            per_round = []
            for rnd in sorted({r["round"] for r in mine}):
                ra = [r for r in mine if r["round"] == rnd and r["server"] == a]
                rb = [r for r in mine if r["round"] == rnd and r["server"] == b]
                if ra and rb:
                    per_round.append(ra[0]["per_s"] / rb[0]["per_s"])
            if per_round:
                per["ratios"][f"{a}/{b}"] = {"per_round": per_round, "median": statistics.median(per_round)}
        summary[set_name] = per
    return summary


def markdown(result: dict[str, Any]) -> str:
    """The tables of a results_store.json (also used by report.py)."""
    summary, runs = result["summary"], result["runs"]
    servers = [s for s in SERVERS + EXTRA_SERVERS if any(s in per["servers"] for per in summary.values())]
    ratio_names = [f"{a}/{b}" for a, b in RATIOS if any(f"{a}/{b}" in per["ratios"] for per in summary.values())]
    probe = result.get("fsync_probe")
    disk = (
        f"Disk: 9.5 kB pwrite + fdatasync {probe['start']['median_ms']:.2f} ms median "
        f"({probe['start']['p90_ms']:.2f} p90) before the run, {probe['end']['median_ms']:.2f} "
        f"({probe['end']['p90_ms']:.2f}) after."
        if probe
        else ""
    )
    lines = ([disk, ""] if disk else []) + [
        f"Instances/s, median (min-max) of {result['rounds']} round(s); ratios are per round (same round = "
        "closest in time): median (min-max).",
        "",
        "| " + " | ".join(["set", *servers, *(r.replace("/", " / ") for r in ratio_names)]) + " |",
        "|---|" + "---:|" * (len(servers) + len(ratio_names)),
    ]
    for set_name, per in summary.items():
        first = next(iter(per["servers"].values()))
        label = f"{set_name} ({first['count']}, {first['associations']} assoc.)"
        cells = [_spread(per["servers"][s]["per_s"], ".0f") if s in per["servers"] else "" for s in servers]
        cells += [_ratio(per["ratios"][r]["per_round"]) if r in per["ratios"] else "" for r in ratio_names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Server CPU per instance, ms (median (min-max); until the server's CPU settled after the last "
        "response; in brackets the median at the last storescu exit):",
        "",
        "| set | " + " | ".join(servers) + " |",
        "|---|" + "---:|" * len(servers),
    ]
    for set_name, per in summary.items():
        cells = []
        for s in servers:
            v = per["servers"].get(s)
            cells.append(
                f"{_spread(v['cpu_ms_per_instance'], '.2f')} [{v['median_cpu_at_exit_ms_per_instance']:.2f}]"
                if v
                else ""
            )
        lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
    lines += ["", "All runs, in order:", "", "| set | round | server | wall s | instances/s | server CPU s |"]
    lines.append("|---|---:|---|---:|---:|---:|")
    for r in runs:
        lines.append(
            f"| {r['set']} | {r['round']} | {r['server']} | {r['seconds']:.2f} | {r['per_s']:.0f} | "
            f"{r['server_cpu_s']:.2f} |"
        )
    return "\n".join(lines)


def _on_sigterm(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="rounds per set [3; 1 with --quick]")
    ap.add_argument("--sets", default="small,ct,small4", help="comma-separated, of: " + ", ".join(SETS))
    ap.add_argument(
        "--servers",
        "--targets",
        dest="servers",
        default=",".join(SERVERS),
        help="comma-separated, of: " + ", ".join(SERVERS + EXTRA_SERVERS),
    )
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round, 100 small / 40 CT instances")
    ap.add_argument("--json", type=Path, default=WORK / "results_store.json")
    args = ap.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    sets = [s for s in args.sets.split(",") if s]
    servers = [s for s in args.servers.split(",") if s]
    for s in sets:
        if s not in SETS:
            ap.error(f"unknown set {s}")
    for s in servers:
        if s not in SERVERS + EXTRA_SERVERS:
            ap.error(f"unknown server {s}")
    preflight(servers)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with `&`
    info = machine_info()
    probe_start = fsync_probe()
    print(f"{info['date']}; {info['cpu']} x {info['nproc']}; kernel {info['kernel']}; load {info['loadavg']}")
    print(f"disk: 9.5 kB pwrite + fdatasync {probe_start['median_ms']:.2f} ms median, {probe_start['p90_ms']:.2f} p90")
    print(f"minipacs from {info['source']}; {info['dcmtk']}; {info['orthanc']}", flush=True)
    runs: list[dict[str, Any]] = []
    started = time.time()
    try:
        data = {s: load_set(s, args.quick) for s in sets}
        sync_disk()
        for set_name in sets:
            warm(data[set_name])  # storescu of the first run must not read the set from disk alone
            for rnd in range(rounds):
                k = rnd % len(servers)
                for server in servers[k:] + servers[:k]:  # rotated: each server goes first in turn
                    r = run_one(server, data[set_name], run_folder(f"store-{set_name}-{server}-{rnd}"), rnd)
                    runs.append(r)
                    print(
                        f"  {set_name:6s} round {rnd} {server:16s} {r['seconds']:7.2f} s {r['per_s']:8.1f} inst/s  "
                        f"server CPU {r['cpu_ms_per_instance']:5.2f} ms/inst",
                        flush=True,
                    )
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, databases dropped, nothing written", file=sys.stderr)
        return 130
    finally:
        stop_all()
        remove_runs()
        for database in list(_DATABASES):
            try:
                pg_drop_database(database)
            except Exception as exc:  # noqa: BLE001
                print(f"could not drop database {database}: {exc}", file=sys.stderr)
    result = {
        "machine": info,
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        "fsync_probe": {"start": probe_start, "end": fsync_probe()},
        "seconds": time.time() - started,
        "rounds": rounds,
        "quick": args.quick,
        "runs": runs,
        "summary": summarise(runs, sets, servers),
    }
    print()
    print(markdown(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
