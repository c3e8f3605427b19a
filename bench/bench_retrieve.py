#!/usr/bin/env python3
"""C-MOVE and C-GET throughput: minipacs vs Orthanc, same data, same SCUs, same run.

The CT set (bench/work/ct, 1,000 instances of 512x512x16 bit, one study; see
gen_data.py) is loaded once into each server (minipacs: ``minipacs import``;
Orthanc: ``minipacs store`` to its DICOM port). Then, each round, in rotated order:

  move  ``/usr/bin/movescu -S -aem STORESCP -k QueryRetrieveLevel=STUDY -k StudyInstanceUID=..``
        to a fresh DCMTK ``storescp -od OUT +B`` (the destination, registered in both servers)
  get   ``/usr/bin/getscu -S +B -od OUT -k ...`` (the images come back on the C-GET association)

Wall time of the SCU process (start to exit) -> instances/s; the received count
is checked. Median over rounds, and the ratio minipacs / Orthanc; server CPU
(utime+stime from /proc) per instance sent. Every DCMTK program
and Orthanc runs with ``TCP_NODELAY=1`` (runs before 2026-12-06 gave it to the SCUs
and storescp only, not to Orthanc).
Results: printed table, JSON in bench/work/results_retrieve.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ORTHANC,
    WORK,
    cpu_seconds,
    free_port,
    machine_info,
    minipacs_cmd,
    peer_env,
    spawn,
    start_orthanc,
    start_storescp,
    stop,
    stop_all,
    wait_listening,
)


def study_uid(folder: Path) -> str:
    first = next(p for p in sorted(folder.rglob("*.dcm")))
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def start_minipacs(run_dir: Path, data: Path, port: int, dest_port: int) -> subprocess.Popen[bytes]:
    cfg = run_dir / "minipacs.toml"
    cfg.write_text(
        'allow_unregistered = "echo,store,find,move,get"\n'
        f'[[nodes]]\nae_title = "STORESCP"\nhost = "127.0.0.1"\nport = {dest_port}\n'
    )
    log = run_dir / "minipacs.log"
    cmd = minipacs_cmd() + ["serve", "--config", str(cfg), "--data", str(data), "--port", str(port)]
    proc = spawn(cmd + ["--host", "127.0.0.1", "--aet", "MINIPACS"], log, peer_env({"MINIPACS_HTTP_PORT": "0"}))
    wait_listening(proc, port, timeout=60.0, log=log)
    return proc


def start_orthanc_peer(run_dir: Path, port: int, http_port: int, dest_port: int) -> subprocess.Popen[bytes]:
    """Orthanc (no plugins, SQLite) that answers C-MOVE/C-GET and knows the storescp destination."""
    return start_orthanc(
        run_dir,
        port,
        http_port,
        config={
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {"dest": ["STORESCP", "127.0.0.1", dest_port]},
        },
    )


def timed(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "ab") as fh:
        res = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=peer_env(), check=False, timeout=1800)
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {res.returncode}; see {log}")
    return took


def received(out: Path) -> int:
    return sum(1 for p in out.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=WORK)
    args = ap.parse_args(argv)
    data_set = args.work / "ct"
    expected = sum(1 for _ in data_set.rglob("*.dcm"))
    if expected == 0:
        print("no data: run bench/gen_data.py first", file=sys.stderr)
        return 2
    uid = study_uid(data_set)
    run_dir = args.work / "runs" / "retrieve"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    dest_port = free_port()
    servers: dict[str, tuple[subprocess.Popen[bytes], int, str]] = {}
    try:
        data = run_dir / "minipacs-data"
        subprocess.run(
            minipacs_cmd() + ["import", "--no-progress", "--data", str(data), str(data_set)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        port = free_port()
        servers["minipacs"] = (start_minipacs(run_dir, data, port, dest_port), port, "MINIPACS")
        if Path(ORTHANC).exists():
            port, http = free_port(), free_port()
            servers["orthanc"] = (start_orthanc_peer(run_dir, port, http, dest_port), port, "ORTHANC")
            subprocess.run(
                minipacs_cmd() + ["store", "--no-progress", "127.0.0.1", str(port), "-aec", "ORTHANC", str(data_set)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        results: dict[str, dict[str, list[float]]] = {name: {"move": [], "get": []} for name in servers}
        #: server CPU (utime+stime, children included) per instance sent, ms
        cpu: dict[str, dict[str, list[float]]] = {name: {"move": [], "get": []} for name in servers}
        names = list(servers)
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                proc, port, aec = servers[name]
                keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}"]
                out = run_dir / f"out-{name}"
                dest = start_storescp(out, dest_port, run_dir / "storescp.log", ["-aet", "STORESCP"])
                cpu0 = cpu_seconds(proc.pid, children=True)
                try:
                    took = timed(
                        [
                            "/usr/bin/movescu",
                            "-S",
                            "-aet",
                            "BENCH",
                            "-aec",
                            aec,
                            "-aem",
                            "STORESCP",
                            *keys,
                            "127.0.0.1",
                            str(port),
                        ],
                        run_dir / f"movescu-{name}.log",
                    )
                finally:
                    stop(dest)
                if received(out) != expected:
                    raise RuntimeError(f"{name} move delivered {received(out)} of {expected}")
                cpu[name]["move"].append((cpu_seconds(proc.pid, children=True) - cpu0) * 1000 / expected)
                results[name]["move"].append(expected / took)
                shutil.rmtree(out)
                out.mkdir()
                cpu0 = cpu_seconds(proc.pid, children=True)
                took = timed(
                    [
                        "/usr/bin/getscu",
                        "-S",
                        "+B",
                        "-aet",
                        "BENCH",
                        "-aec",
                        aec,
                        "-od",
                        str(out),
                        *keys,
                        "127.0.0.1",
                        str(port),
                    ],
                    run_dir / f"getscu-{name}.log",
                )
                if received(out) != expected:
                    raise RuntimeError(f"{name} get delivered {received(out)} of {expected}")
                cpu[name]["get"].append((cpu_seconds(proc.pid, children=True) - cpu0) * 1000 / expected)
                results[name]["get"].append(expected / took)
                shutil.rmtree(out)
                print(
                    f"round {rnd + 1} {name}: move {results[name]['move'][-1]:.0f}/s, "
                    f"get {results[name]['get'][-1]:.0f}/s; server CPU ms/instance move "
                    f"{cpu[name]['move'][-1]:.2f}, get {cpu[name]['get'][-1]:.2f}",
                    flush=True,
                )
    finally:
        for proc, _port, _aec in servers.values():
            stop(proc)
        stop_all()
    summary = {name: {op: statistics.median(v) for op, v in ops.items()} for name, ops in results.items()}
    print(f"\n{expected} CT instances, median of {args.rounds} round(s), instances/s")
    print(f"{'target':<10} {'C-MOVE':>8} {'C-GET':>8}")
    for name, ops in summary.items():
        print(f"{name:<10} {ops['move']:>8.0f} {ops['get']:>8.0f}")
    if "orthanc" in summary:
        print(
            f"{'ratio':<10} {summary['minipacs']['move'] / summary['orthanc']['move']:>7.2f}x "
            f"{summary['minipacs']['get'] / summary['orthanc']['get']:>7.2f}x"
        )
    (args.work / "results_retrieve.json").write_text(
        json.dumps(
            {
                "machine": machine_info(),
                "instances": expected,
                "rounds": results,
                "median": summary,
                "server_cpu_ms_per_instance": cpu,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
