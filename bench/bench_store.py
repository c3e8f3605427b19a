#!/usr/bin/env python3
"""C-STORE throughput: minipacs vs DCMTK storescp, same data, same sender, same run.

For each data set (bench/work/ct, bench/work/small; see gen_data.py) and each
round, every target gets a fresh server and output folder, and
``/usr/bin/storescu -xe +sd +r -aec MINIPACS 127.0.0.1 PORT DIR`` (env
TCP_NODELAY=1) sends the whole set over one association. Wall time of
storescu (process start to exit) -> instances/s. The order of the targets is
rotated each round; the median over rounds is reported, with the ratio
minipacs / storescp.

Targets:
  minipacs        ``minipacs serve`` (fsync on, the default)
  storescp        ``storescp -od OUT +B PORT`` (no fsync: DCMTK 3.6.7 has no fsync option)
  storescp+sync   as above plus ``-xcr "/usr/bin/sync -d #p/#f" -xs``: after each file is
                  written (and its C-STORE-RSP sent) storescp runs ``sync -d FILE`` (fdatasync)
                  in the foreground before reading the next request -- the closest DCMTK gets
                  to "fsync every file"; it pays a fork+exec per file on top.

``sync`` (whole system) runs between runs, untimed, so one run's writeback does
not land on the next. minipacs' stored count is checked (files under DATA/storage).
Results: printed table, and JSON in bench/work/results_store.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    STORESCU,
    WORK,
    count_files,
    cpu_seconds,
    free_port,
    start_minipacs,
    start_storescp,
    stop,
    sync_disk,
)

SETS = {"ct": WORK / "ct", "small": WORK / "small"}
TARGETS = ("minipacs", "storescp", "storescp+sync")
#: Not run by default (--targets): minipacs with MINIPACS_FSYNC=0, to see what fsync costs.
EXTRA_TARGETS = ("minipacs-nofsync",)
STORESCU_TIMEOUT = 300.0


def send(folder: Path, port: int, log: Path) -> float:
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = [STORESCU, "-xe", "+sd", "+r", "-aec", "MINIPACS", "127.0.0.1", str(port), str(folder)]
    with open(log, "wb") as fh:
        start = time.perf_counter()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=STORESCU_TIMEOUT).returncode
        took = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"storescu exited with {rc}; see {log}")
    return took


def run_one(target: str, set_name: str, folder: Path, expected: int, run_dir: Path) -> dict[str, float | int | str]:
    port = free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "out"
    proc = None
    try:
        if target == "minipacs":
            proc = start_minipacs(out, port, run_dir / "server.log")
        elif target == "minipacs-nofsync":
            proc = start_minipacs(out, port, run_dir / "server.log", {"MINIPACS_FSYNC": "0"})
        elif target == "storescp":
            proc = start_storescp(out, port, run_dir / "server.log")
        else:
            proc = start_storescp(out, port, run_dir / "server.log", ["-xcr", "/usr/bin/sync -d #p/#f", "-xs"])
        cpu0 = cpu_seconds(proc.pid)
        took = send(folder, port, run_dir / "storescu.log")
        cpu = cpu_seconds(proc.pid) - cpu0
        stored = count_files(out / "storage", ".dcm") if target.startswith("minipacs") else count_files(out)
    finally:
        rc = stop(proc)
    if stored != expected:
        raise RuntimeError(f"{target} stored {stored} of {expected} instances of {set_name}")
    if target.startswith("minipacs") and rc != 0:
        raise RuntimeError(f"minipacs exited with {rc} after SIGINT; see {run_dir / 'server.log'}")
    shutil.rmtree(out, ignore_errors=True)
    sync_disk()
    return {
        "target": target,
        "set": set_name,
        "seconds": took,
        "per_s": expected / took,
        "server_cpu_s": cpu,
        "stored": stored,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sets", default="ct,small")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--json", type=Path, default=WORK / "results_store.json")
    args = ap.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS + EXTRA_TARGETS:
            ap.error(f"unknown target {t}")
    runs: list[dict[str, float | int | str]] = []
    sync_disk()
    for set_name in sets:
        folder = SETS[set_name]
        expected = count_files(folder, ".dcm")
        if expected == 0:
            print(f"no data in {folder}; run bench/gen_data.py first", file=sys.stderr)
            return 2
        for rnd in range(args.rounds):
            k = rnd % len(targets)
            order = targets[k:] + targets[:k]  # rotate so each target runs first once
            for target in order:
                r = run_one(target, set_name, folder, expected, WORK / "runs" / f"{set_name}-{target}-{rnd}")
                r["round"] = rnd
                runs.append(r)
                print(
                    f"  {set_name:5s} round {rnd} {target:14s} {r['seconds']:7.2f} s  "
                    f"{r['per_s']:8.1f} inst/s  server CPU {r['server_cpu_s']:6.2f} s",
                    flush=True,
                )
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for set_name in sets:
        summary[set_name] = {}
        for target in targets:
            mine = [r for r in runs if r["set"] == set_name and r["target"] == target]
            summary[set_name][target] = {
                "median_per_s": statistics.median(float(r["per_s"]) for r in mine),
                "median_seconds": statistics.median(float(r["seconds"]) for r in mine),
                "median_server_cpu_s": statistics.median(float(r["server_cpu_s"]) for r in mine),
                "n": len(mine),
                "count": int(mine[0]["stored"]),
            }
        # per-round ratios (same round = closest in time), then their median
        ratios: dict[str, list[float]] = {}
        for peer in targets:
            if peer == "minipacs" or "minipacs" not in targets:
                continue
            rs = []
            for rnd in range(args.rounds):
                a = [r for r in runs if r["set"] == set_name and r["round"] == rnd and r["target"] == "minipacs"]
                b = [r for r in runs if r["set"] == set_name and r["round"] == rnd and r["target"] == peer]
                if a and b:
                    rs.append(float(a[0]["per_s"]) / float(b[0]["per_s"]))
            ratios[peer] = rs
        summary[set_name]["ratios"] = {p: {"per_round": v, "median": statistics.median(v)} for p, v in ratios.items()}  # type: ignore[dict-item]

    print()
    print(f"{'set':6s} {'target':14s} {'median s':>9s} {'inst/s':>9s} {'srv CPU s':>9s}  minipacs/target (per round)")
    for set_name in sets:
        for target in targets:
            s = summary[set_name][target]
            rat = summary[set_name].get("ratios", {}).get(target)  # type: ignore[union-attr]
            rtxt = "" if rat is None else f"{rat['median']:.2f}x  ({', '.join(f'{x:.2f}' for x in rat['per_round'])})"
            print(
                f"{set_name:6s} {target:14s} {s['median_seconds']:9.2f} {s['median_per_s']:9.1f} "
                f"{s['median_server_cpu_s']:9.2f}  {rtxt}"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"runs": runs, "summary": summary, "rounds": args.rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
