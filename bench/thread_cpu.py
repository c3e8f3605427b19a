#!/usr/bin/env python3
"""CPU per stored instance, per thread: the event loop's (main) thread apart from the rest.

The whole-process CPU of ``ab_store.py`` mixes the event loop with the index writer, whose SQLite
and ``fdatasync`` vary far more from run to run than the loop's work; a change to the network path
is lost in it. This runs two source trees in interleaved rounds: a fresh ``minipacs serve`` each,
``/usr/bin/storescu -xe +sd +r`` sending ``--count`` small MR instances (64x64, ~9.5 kB) on one
association, and reads every thread's CPU around the send: on-CPU nanoseconds from
``/proc/PID/task/TID/schedstat`` (exact) and utime/stime from ``.../stat`` (10 ms ticks). Of the
other threads the busiest is reported on its own: the index writer (bench/writer_cpu.py measures it
in process).

  python bench/thread_cpu.py --a /path/to/old/src --b src [--count 3000] [--rounds 6] [--nagle]

``--nagle``: storescu without ``TCP_NODELAY=1`` (DCMTK's default, Nagle on). The data set is
generated once under bench/work/ and reused; each run's data folder is new (see
_common.run_folder: nothing is deleted while measuring) and all are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CLK_TCK,
    STORESCU,
    WORK,
    free_port,
    machine_info,
    peer_env,
    remove_runs,
    run_folder,
    start_minipacs,
    stop,
    stop_all,
)
from ab_store import _use
from gen_data import MR_IMAGE_STORAGE, generate


def threads(pid: int) -> dict[int, tuple[int, int, int]]:
    """TID -> (utime ticks, stime ticks, on-CPU ns) of every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                ns = int(fh.read().split()[0])
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (int(fields[11]), int(fields[12]), ns)
    return out


def run_one(data: Path, count: int, name: str, nagle: bool) -> dict[str, float]:
    """One fresh server receiving ``data``: microseconds per instance, main thread and the rest."""
    run = run_folder(name)
    port = free_port()
    proc = start_minipacs(run / "data", port, run / "server.log")
    try:
        time.sleep(0.5)  # start-up work done
        before = threads(proc.pid)
        started = time.perf_counter()
        env = peer_env()
        if nagle:
            env.pop("TCP_NODELAY")
        cmd = [STORESCU, "-xe", "+sd", "+r", "-aec", "MINIPACS", "127.0.0.1", str(port), str(data)]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        took = time.perf_counter() - started
        time.sleep(1.0)  # work after the last response (the writer's last batch) counts
        after = threads(proc.pid)
    finally:
        stop(proc)
    main = [0.0, 0.0, 0.0]
    rest = [0.0, 0.0, 0.0]
    busiest = 0.0  # the busiest other thread: the index writer (core/archive.py)
    for tid, (utime, stime, ns) in after.items():
        u0, s0, ns0 = before.get(tid, (0, 0, 0))
        into = main if tid == proc.pid else rest
        into[0] += (utime - u0) / CLK_TCK * 1e6 / count
        into[1] += (stime - s0) / CLK_TCK * 1e6 / count
        into[2] += (ns - ns0) / 1e3 / count
        if tid != proc.pid:
            busiest = max(busiest, (ns - ns0) / 1e3 / count)
    return {
        "rate": count / took,
        "main": main[2],
        "main_user": main[0],
        "main_sys": main[1],
        "rest": rest[2],
        "writer": busiest,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=Path, required=True, help="the 'before' src/ folder")
    ap.add_argument("--b", type=Path, required=True, help="the 'after' src/ folder")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--nagle", action="store_true", help="storescu with Nagle on (no TCP_NODELAY=1)")
    args = ap.parse_args(argv)
    info = machine_info()
    print(f"{info['date']}; {info['cpu']} x {info['nproc']}; load {info['loadavg']}", flush=True)
    data = WORK / f"thread-cpu-{args.count}"
    generate(data, args.count, "MR", MR_IMAGE_STORAGE, 64, 64, 7)  # skipped when already there
    targets = [("A", args.a.resolve()), ("B", args.b.resolve())]
    results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    try:
        for rnd in range(args.rounds):
            for name, src in targets if rnd % 2 == 0 else targets[::-1]:
                _use(src)
                r = run_one(data, args.count, f"threads-{name}-{rnd}", args.nagle)
                results[name].append(r)
                print(
                    f"round {rnd} {name}: {r['rate']:6.0f}/s  main {r['main']:6.1f} us/inst "
                    f"(user {r['main_user']:.0f}, sys {r['main_sys']:.0f})  other threads {r['rest']:6.1f} "
                    f"(busiest, the writer: {r['writer']:6.1f})",
                    flush=True,
                )
    finally:
        stop_all()
        remove_runs()
    print()
    for name, runs in results.items():
        print(
            f"{name}: median {statistics.median(r['rate'] for r in runs):.0f}/s; main thread "
            f"{statistics.median(r['main'] for r in runs):.1f} us/inst (user "
            f"{statistics.median(r['main_user'] for r in runs):.0f}, sys "
            f"{statistics.median(r['main_sys'] for r in runs):.0f}); other threads "
            f"{statistics.median(r['rest'] for r in runs):.1f} (the writer "
            f"{statistics.median(r['writer'] for r in runs):.1f})"
        )
    pairs = list(zip(results["A"], results["B"], strict=True))
    for key in ("main", "rest", "writer", "rate"):
        ratios = [b[key] / a[key] for a, b in pairs]
        median = statistics.median(ratios)
        print(f"B/A {key:6s} per round: {', '.join(f'{r:.2f}' for r in ratios)}; median {median:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
