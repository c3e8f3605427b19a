#!/usr/bin/env python3
"""CPU of minipacs holding 50 idle associations (target: < 2 % of one core).

Starts ``minipacs serve`` with MINIPACS_MAX_ASSOCIATIONS=64 and
MINIPACS_IDLE_TIMEOUT=600 (longer than the measurement), measures the
server's CPU (utime+stime of all threads, /proc/PID/stat) over a baseline with
no association, then opens 50 associations from raw sockets (a hand-built
A-ASSOCIATE-RQ proposing Verification, PS3.8 §9.3.2), checks each got an
A-ASSOCIATE-AC, stays silent for 30 s while measuring again, checks all 50 are
still open, and releases them (A-RELEASE-RQ / -RP).
Results: printed, and JSON in bench/work/results_idle.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, cpu_seconds, free_port, proc_status, start_minipacs, stop

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_VR_LE = b"1.2.840.10008.1.2"
IMPLEMENTATION_CLASS = b"1.2.826.0.1.3680043.8.498.1"


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(called: str, calling: str) -> bytes:
    pc = struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x30, VERIFICATION) + _item(0x40, IMPLICIT_VR_LE)
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, IMPLEMENTATION_CLASS)
    body = (
        struct.pack(">HH", 1, 0)
        + called.encode().ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
        + _item(0x10, APPLICATION_CONTEXT)
        + _item(0x20, pc)
        + _item(0x50, user)
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = _recv_exactly(sock, 6)
    kind, _, length = struct.unpack(">BBI", head)
    return kind, _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return buf


def still_open(sock: socket.socket) -> bool:
    """No EOF and nothing unexpected waiting (an A-ABORT would be readable)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
        return False  # EOF (b"") or an unexpected PDU (e.g. A-ABORT)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def cpu_over(pid: int, seconds: float) -> tuple[float, float]:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return c1 - c0, t1 - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--associations", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--baseline", type=float, default=10.0)
    ap.add_argument("--json", type=Path, default=WORK / "results_idle.json")
    args = ap.parse_args(argv)
    run_dir = WORK / "runs" / "idle"
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {"MINIPACS_MAX_ASSOCIATIONS": "64", "MINIPACS_IDLE_TIMEOUT": str(max(600.0, 2 * args.seconds + 60))}
    proc = None
    socks: list[socket.socket] = []
    try:
        proc = start_minipacs(run_dir / "data", port, run_dir / "server.log", env)
        time.sleep(1.0)  # let start-up work settle
        base_cpu, base_wall = cpu_over(proc.pid, args.baseline)
        rq = associate_rq("MINIPACS", "IDLEBENCH")
        for _ in range(args.associations):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(rq)
            kind, body = read_pdu(s)
            if kind != 0x02:
                raise RuntimeError(f"association {len(socks) + 1} got PDU type {kind:#04x}, not A-ASSOCIATE-AC")
            socks.append(s)
        time.sleep(1.0)
        threads = proc_status(proc.pid).get("Threads", 0)
        idle_cpu, idle_wall = cpu_over(proc.pid, args.seconds)
        open_after = sum(still_open(s) for s in socks)
        released = 0
        for s in socks:
            try:
                s.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
                kind, _ = read_pdu(s)
                released += kind == 0x06
            except OSError:
                pass
    finally:
        for s in socks:
            s.close()
        stop(proc)
    pct = 100.0 * idle_cpu / idle_wall
    base_pct = 100.0 * base_cpu / base_wall
    ok = pct < 2.0 and open_after == args.associations
    results = {
        "associations": args.associations,
        "seconds": idle_wall,
        "cpu_s": idle_cpu,
        "pct_core": pct,
        "baseline_seconds": base_wall,
        "baseline_cpu_s": base_cpu,
        "baseline_pct_core": base_pct,
        "still_open": open_after,
        "released": released,
        "server_threads": threads,
        "target_met": ok,
    }
    print(f"baseline (0 associations): {base_cpu:.2f} s CPU in {base_wall:.1f} s = {base_pct:.2f} % of a core")
    print(
        f"{args.associations} idle associations: {idle_cpu:.2f} s CPU in {idle_wall:.1f} s = {pct:.2f} % of a core; "
        f"{open_after} still open after, {released} released cleanly; server threads {threads}"
    )
    print(f"target < 2 % of a core: {'MET' if ok else 'MISSED'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
