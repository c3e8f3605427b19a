#!/usr/bin/env python3
"""Where one C-STORE's time goes: a timestamp at each step of the critical path, per instance.

Profilers show CPU; a C-STORE on one association is a chain of waits and hand-offs between the event
loop, the index writer, the C library's flush thread and the sender. This starts ``minipacs serve``
with a few methods wrapped to record ``perf_counter_ns`` (about 1 us each, in the process itself),
sends a set with ``/usr/bin/storescu -xe +sd +r`` (``TCP_NODELAY=1``), and prints the median time of
each step of the most common sequence, from one answer written to the next:

  python bench/trace_store.py [--src src] [--set store-small-500] [--skip 100]

``--src``: the minipacs source tree to trace (another checkout, for a before/after). The steps named
depend on the tree (a method that is not there is not traced). The wrappers add a few percent; compare
two trees in the same run, not with bench_store.py's rates. The data set is bench_store.py's (run it once
to generate bench/work/store-small-500 and store-ct-200).
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
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STORESCU, WORK, free_port, peer_env, wait_listening

#: The server side, run as ``python -c`` in the traced tree: wraps, records, dumps on SIGUSR1.
_SERVER = r"""
import asyncio, json, os, signal, sys, time
EVENTS = []
now = time.perf_counter_ns
def mark(name):
    EVENTS.append((name, now()))
import minipacs.core.archive as A, minipacs.core.intake as I, minipacs.net.dul as D
import minipacs.net.association as AS, minipacs.services.storage as S

def around(cls, name, label=None, after=False):
    real = getattr(cls, name, None)
    if real is None:
        return
    label = label or name
    if asyncio.iscoroutinefunction(real):
        async def wrapped(*a, **k):
            mark(label)
            try:
                return await real(*a, **k)
            finally:
                if after:
                    mark(label + " done")
    else:
        def wrapped(*a, **k):
            mark(label)
            try:
                return real(*a, **k)
            finally:
                if after:
                    mark(label + " done")
    setattr(cls, name, wrapped)

around(S.StagingSink, "finish", "dataset received")
around(AS.Association, "pdata_indication", "P-DATA")
around(S.StorageSCP, "c_store", "handler")
around(A.Archive, "ingest", "ingest", after=True)
around(A.Archive, "_commit_batch", "writer", after=True)
around(A.Archive, "_move_into_storage", "move", after=True)
around(I.IntakeLog, "write", "log write", after=True)
around(I.IntakeLog, "append", "log append+flush", after=True)
around(I.IntakeLog, "finish_flush", "flush wait", after=True)
around(D.UpperLayer, "_write", "answer")
real_prepare = A.prepare_ingest
def prepare(*a, **k):
    mark("checks")
    try:
        return real_prepare(*a, **k)
    finally:
        mark("checks done")
A.prepare_ingest = prepare

def dump(*_):
    with open(os.environ["TRACE_OUT"], "w") as fh:
        json.dump(EVENTS, fh)
    os._exit(0)
signal.signal(signal.SIGUSR1, dump)
from minipacs.cli.main import main
sys.argv = ["minipacs"] + sys.argv[1:]
sys.exit(main())
"""


def trace(src: Path, data: Path, out: Path) -> float:
    """Run the traced server on ``src``, send ``data``, leave the events in ``out``; the rate (/s)."""
    folder = Path(tempfile.mkdtemp(prefix="trace-store-"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src), "TRACE_OUT": str(out), "MINIPACS_HTTP_PORT": "0"}
    cmd = [sys.executable, "-c", _SERVER, "serve", "--data", str(folder / "data"), "--port", str(port)]
    cmd += ["--aet", "MINIPACS", "--host", "127.0.0.1"]
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(server, port, timeout=60.0, log=folder / "server.log")
        count = sum(1 for _ in data.rglob("*.dcm"))
        started = time.perf_counter()
        sender = [STORESCU, "-xe", "+sd", "+r", "-aec", "MINIPACS", "127.0.0.1", str(port), str(data)]
        subprocess.run(sender, env=peer_env(), check=True, capture_output=True)
        rate = count / (time.perf_counter() - started)
        time.sleep(0.5)
        server.send_signal(signal.SIGUSR1)
        server.wait(timeout=30)
        return rate
    finally:
        if server.poll() is None:
            server.kill()
        shutil.rmtree(folder, ignore_errors=True)


def steps(events: list[tuple[str, int]], skip: int) -> tuple[int, list[tuple[str, float]]]:
    """The most common sequence of events between two answers, and the median of each step (us)."""
    answers = [i for i, (name, _) in enumerate(events) if name == "answer"]
    cycles: dict[tuple[str, ...], list[list[float]]] = defaultdict(list)
    for a, b in zip(answers[skip:-1], answers[skip + 1 :], strict=False):
        seq = events[a : b + 1]
        names = tuple(name for name, _ in seq)
        cycles[names].append([(seq[i + 1][1] - seq[i][1]) / 1000 for i in range(len(seq) - 1)])
    names, rows = max(cycles.items(), key=lambda item: len(item[1]))
    return len(rows), [
        (f"{names[i]} -> {names[i + 1]}", statistics.median(row[i] for row in rows)) for i in range(len(names) - 1)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent / "src")
    ap.add_argument("--set", default="store-small-500", help="a folder of bench/work/")
    ap.add_argument("--skip", type=int, default=100, help="answers left out at the start (warm-up)")
    args = ap.parse_args(argv)
    data = WORK / args.set
    if not data.is_dir():
        print(f"{data} is missing: run bench/bench_store.py once to generate it", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "events.json"
        rate = trace(args.src.resolve(), data, out)
        events = [(str(name), int(t)) for name, t in json.loads(out.read_text())]
    count, table = steps(events, args.skip)
    print(f"{args.src}: {rate:.0f} instances/s (traced); {count} cycles of the most common sequence")
    print("| step | median, us |\n|---|---:|")
    for name, value in table:
        print(f"| {name} | {value:.0f} |")
    print(f"| **whole cycle** | **{sum(v for _, v in table):.0f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
