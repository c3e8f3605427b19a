#!/usr/bin/env python3
"""Instructions per received instance (valgrind --tool=callgrind) -- read the caveat first.

``minipacs serve`` runs under callgrind twice, receiving ``--low`` and then ``--high`` small
instances from /usr/bin/storescu on one association; ``(Ir(high) - Ir(low)) / (high - low)``
cancels start-up. ``--interval``: one server, ``--low`` instances to warm up, then the counters
are read (callgrind_control) around the sending of the rest. All threads; user space only.

Caveat (bench/RESULTS.md, 2026-12-06 "C-STORE path CPU"): under valgrind the server runs ~50x
slower, so its time-driven background work (job runner, staging pool, lazy first-use imports
compiled from source when PYTHONDONTWRITEBYTECODE is set) grows 50x per instance and can dominate:
repeated runs of one tree gave 2.7 M and 19.6 M per instance. Not a before/after measure as is.

  python bench/callgrind_store.py [--low 20] [--high 220] [--tag NAME] [--interval]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, free_port, minipacs_cmd, peer_env, spawn, stop, wait_listening
from bench_store import load_set

VALGRIND = "/usr/bin/valgrind"


def instructions(files: list[Path], run_dir: Path) -> int:
    """Total instructions (Ir) of one ``minipacs serve`` that receives ``files`` on one association."""
    import subprocess

    src = run_dir / "src"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    src.mkdir(parents=True)
    for i, f in enumerate(files):
        (src / f"f{i:05d}.dcm").symlink_to(f.resolve())
    out = run_dir / "callgrind.out"
    port = free_port()
    prefix = [VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-line=no"]
    env = peer_env({"MINIPACS_HTTP_PORT": "0", "PYTHONMALLOC": "malloc"})
    serve = ["serve", "--data", str(run_dir / "data"), "--port", str(port), "--aet", "MINIPACS", "--host", "127.0.0.1"]
    server = spawn(prefix + minipacs_cmd() + serve, run_dir / "server.log", env)
    try:
        wait_listening(server, port, timeout=900.0, log=run_dir / "server.log")
        if files:
            cmd = ["/usr/bin/storescu", "-xe", "+sd", "+r", "-aet", "BENCH", "-aec", "MINIPACS"]
            cmd += ["-to", "600", "-td", "600", "-ta", "600", "127.0.0.1", str(port), str(src)]
            subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
    finally:
        stop(server, grace=600.0)
    text = out.read_text(errors="replace")
    match = re.search(r"^summary:\s*(\d+)", text, re.M) or re.search(r"^totals:\s*(\d+)", text, re.M)
    if match is None:
        raise RuntimeError(f"no summary in {out}")
    return int(match.group(1))


def counted(pid: int) -> int:
    """Instructions counted so far in all threads of a running callgrind (``callgrind_control -e``)."""
    import subprocess

    out = subprocess.run(["/usr/bin/callgrind_control", "-e", str(pid)], capture_output=True, text=True, timeout=600)
    return sum(int(m.group(1).replace(",", "")) for m in re.finditer(r"^\s*Th \d+\s+([\d,]+)", out.stdout, re.M))


def interval(files: list[Path], warm: int, run_dir: Path) -> tuple[float, float, float]:
    """One server: ``warm`` instances first (start-up and first-use work: lazy imports, caches), then
    the counters are read around the sending of the rest, and around as long an idle interval.
    Returns (instructions per instance, the same less the idle rate over the sending time, seconds)."""
    import subprocess
    import time

    if run_dir.exists():
        shutil.rmtree(run_dir)
    folders = []
    for name, part in (("warm", files[:warm]), ("measured", files[warm:])):
        folder = run_dir / name
        folder.mkdir(parents=True)
        for i, f in enumerate(part):
            (folder / f"f{i:05d}.dcm").symlink_to(f.resolve())
        folders.append(folder)
    port = free_port()
    prefix = [VALGRIND, "--tool=callgrind", f"--callgrind-out-file={run_dir / 'callgrind.out'}", "--dump-line=no"]
    env = peer_env({"MINIPACS_HTTP_PORT": "0", "PYTHONMALLOC": "malloc"})
    serve = ["serve", "--data", str(run_dir / "data"), "--port", str(port), "--aet", "MINIPACS", "--host", "127.0.0.1"]
    server = spawn(prefix + minipacs_cmd() + serve, run_dir / "server.log", env)
    cmd = ["/usr/bin/storescu", "-xe", "+sd", "+r", "-aet", "BENCH", "-aec", "MINIPACS"]
    cmd += ["-to", "600", "-td", "600", "-ta", "600", "127.0.0.1", str(port)]
    try:
        wait_listening(server, port, timeout=900.0, log=run_dir / "server.log")
        subprocess.run([*cmd, str(folders[0])], check=True, capture_output=True, timeout=1800)
        time.sleep(5)
        ir0, t0 = counted(server.pid), time.monotonic()
        subprocess.run([*cmd, str(folders[1])], check=True, capture_output=True, timeout=1800)
        ir1, t1 = counted(server.pid), time.monotonic()
        time.sleep(t1 - t0)
        ir2, t2 = counted(server.pid), time.monotonic()
    finally:
        stop(server, grace=600.0)
    n = len(files) - warm
    idle_rate = (ir2 - ir1) / (t2 - t1)
    return (ir1 - ir0) / n, ((ir1 - ir0) - idle_rate * (t1 - t0)) / n, t1 - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--low", type=int, default=20)
    ap.add_argument("--high", type=int, default=220)
    ap.add_argument("--tag", default="", help="a name for this run's work folder (runs side by side)")
    ap.add_argument(
        "--interval",
        action="store_true",
        help="one server: --low instances to warm up, then count only while --high - --low more are sent "
        "(callgrind_control), less the idle rate; excludes start-up and lazy first-use work",
    )
    args = ap.parse_args(argv)
    files = sorted(p for p in load_set("small", quick=False).sources[0].rglob("*") if p.is_file())
    if len(files) < args.high:
        print(f"need {args.high} files, have {len(files)}", file=sys.stderr)
        return 2
    work = WORK / "callgrind" / args.tag if args.tag else WORK / "callgrind"
    if args.interval:
        per, net, took = interval(files[: args.high], args.low, work / "interval")
        print(f"{args.high - args.low} instances after {args.low} to warm up, {took:.0f} s under valgrind")
        print(f"instructions per instance: {per:,.0f} ({net:,.0f} less the idle rate)")
        return 0
    low = instructions(files[: args.low], work / "low")
    high = instructions(files[: args.high], work / "high")
    per = (high - low) / (args.high - args.low)
    print(f"Ir: {args.low} instances {low:,}; {args.high} instances {high:,}")
    print(f"instructions per instance: {per:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
