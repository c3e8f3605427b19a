#!/usr/bin/env python3
"""Where does minipacs spend its time receiving a data set? (py-spy, sampling)

Starts ``minipacs serve``, attaches ``py-spy record`` (all threads, active samples
only, raw collapsed stacks), sends the set with /usr/bin/storescu, stops both
and prints the top functions by self time and by inclusive time, per thread
group, keeps the raw stacks (flamegraph.pl input) in bench/work/profile/.

  pip install py-spy      # needed; not a project dependency
  python bench/profile_store.py [--set small|ct]
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, free_port, start_minipacs, stop
from bench_store import SETS, load_set, send

from minipacs.blobs.filesystem import FilesystemBlobStore

#: Leaf frames where a thread waits rather than works (py-spy's idle detection misses
#: these: the GIL is released inside C calls it does not recognise as waits).
IDLE_LEAVES = frozenset({"EpollSelector.select", "_worker", "Archive._run_writer"})


def _thread(frame: str) -> str:
    # "thread (0x7f..): MainThread" or "thread (1234): name"
    return frame.split(": ", 1)[-1]


def summarize(raw: Path, rate: int, instances: int, top: int) -> dict[str, object]:
    """Per thread: busy seconds, busy ms per instance, and the heaviest frames
    (inclusive; function + line) counted once per sample."""
    busy: collections.Counter[str] = collections.Counter()
    idle: collections.Counter[str] = collections.Counter()
    frames_by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    self_by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = stack.split(";")
        thread = _thread(frames[0])
        if frames[-1].split(" (")[0] in IDLE_LEAVES:
            idle[thread] += count
            continue
        busy[thread] += count
        self_by_thread[thread][frames[-1]] += count
        for frame in set(frames[1:]):
            frames_by_thread[thread][frame] += count

    def ms(n: int) -> float:
        return 1000.0 * n / rate / instances

    out: dict[str, object] = {"rate": rate, "instances": instances, "threads": {}}
    for thread, n in busy.most_common():
        out["threads"][thread] = {  # type: ignore[index]
            "busy_s": n / rate,
            "idle_s": idle[thread] / rate,
            "busy_ms_per_instance": ms(n),
            "inclusive": [(f, ms(c)) for f, c in frames_by_thread[thread].most_common(top)],
            "self": [(f, ms(c)) for f, c in self_by_thread[thread].most_common(top)],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="small", choices=sorted(SETS))
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (Python CPU; hides fsync and other waits)",
    )
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second [250]")
    args = ap.parse_args(argv)
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    data = load_set(args.set, quick=False)
    expected = data.count
    outdir = WORK / "profile"
    outdir.mkdir(parents=True, exist_ok=True)
    tag = f"{args.set}{'-gil' if args.gil else ''}"
    raw = outdir / f"{tag}.txt"
    port = free_port()
    server = spy = None
    try:
        server = start_minipacs(outdir / "data", port, outdir / "server.log")
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "--pid",
                str(server.pid),
                "--format",
                "raw",
                "--threads",
                "--rate",
                str(args.rate),
                "-o",
                str(raw),
                *(["--gil"] if args.gil else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(outdir / "py-spy.log", "wb"),  # noqa: SIM115 - py-spy keeps it until it exits
        )
        time.sleep(1.0)  # let py-spy attach
        run_dir = outdir / "run"
        run_dir.mkdir(exist_ok=True)
        took = send(data, "MINIPACS", port, run_dir)
        stored = sum(1 for _ in FilesystemBlobStore(outdir / "data" / "storage").keys())  # files and pack entries
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.wait(60)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(10)
        stop(server)
    print(f"{tag}: {stored}/{expected} stored in {took:.2f} s ({expected / took:.1f} inst/s) under py-spy")
    if not raw.exists():
        print("py-spy wrote nothing; see", outdir / "py-spy.log", file=sys.stderr)
        return 1
    s = summarize(raw, args.rate, expected, args.top)
    for thread, t in s["threads"].items():  # type: ignore[union-attr]
        print(
            f"\n== thread {thread}: busy {t['busy_s']:.2f} s (idle-wait {t['idle_s']:.2f} s), "
            f"{t['busy_ms_per_instance']:.3f} ms busy per instance"
        )
        print("   inclusive ms/instance:")
        for frame, v in t["inclusive"]:
            print(f"   {v:7.3f}  {frame}")
        print("   self ms/instance (a C call, e.g. os.fsync, shows as its Python caller's line):")
        for frame, v in t["self"][:12]:
            print(f"   {v:7.3f}  {frame}")
    (outdir / f"{tag}.json").write_text(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
