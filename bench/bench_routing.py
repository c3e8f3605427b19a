#!/usr/bin/env python3
"""Auto-routing (issue 13): a 1,000-instance CT study forwarded by a rule to DCMTK storescp.

Each round, for each mode, a fresh ``minipacs serve`` (fsync on, SQLite) with the destination
registered, a fresh ``/usr/bin/storescp -od OUT +B`` (env ``TCP_NODELAY=1``) as the destination,
and the CT set (bench/work/ct, gen_data.py) sent by ``/usr/bin/storescu -xe +sd +r`` (env
``TCP_NODELAY=1``) on one association:

  none      no rule: the ingest rate without routing
  instance  ``when = "instance"``, ``send_to = ["DEST"]``: forwarded while it arrives
  stable    ``when = "stable"``, ``stable_seconds = 1``: forwarded once the study is quiet

Measured: the ingest rate (instances / storescu wall time); the delay from the last arrival
(storescu exit: every instance acknowledged) to the last delivery (the 1,000th file complete in
storescp's folder, polled every 20 ms), and the jobs the rule made. Median over rounds.
Results: printed, JSON in bench/work/results_routing.json.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    STORESCU,
    WORK,
    free_port,
    machine_info,
    minipacs_cmd,
    peer_env,
    spawn,
    start_storescp,
    stop,
    stop_all,
    wait_listening,
)

RULES = {
    "none": "",
    "instance": '[[rules]]\nname = "fwd"\nwhen = "instance"\nsend_to = ["DEST"]\n',
    "stable": '[[rules]]\nname = "fwd"\nwhen = "stable"\nstable_seconds = 1\nsend_to = ["DEST"]\n',
}


def delivered(out: Path) -> int:
    return sum(1 for p in out.iterdir() if p.is_file() and not p.name.endswith(".tmp"))


def one(run_dir: Path, ct: Path, count: int, mode: str) -> dict[str, Any]:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    port, dest_port = free_port(), free_port()
    out = run_dir / "dest"
    dest = start_storescp(out, dest_port, run_dir / "storescp.log")
    cfg = run_dir / "minipacs.toml"
    cfg.write_text(f'[[nodes]]\nae_title = "DEST"\nhost = "127.0.0.1"\nport = {dest_port}\n\n{RULES[mode]}')
    env = peer_env({"MINIPACS_HTTP_PORT": "0"})
    cmd = [*minipacs_cmd(), "serve", "--config", str(cfg), "--data", str(run_dir / "data"), "--port", str(port)]
    cmd += ["--aet", "MINIPACS", "--host", "127.0.0.1"]
    server = spawn(cmd, run_dir / "minipacs.log", env)
    try:
        wait_listening(server, port, timeout=60.0, log=run_dir / "minipacs.log")
        start = time.perf_counter()
        res = subprocess.run(
            [STORESCU, "-xe", "+sd", "+r", "-aet", "CT01", "-aec", "MINIPACS", "127.0.0.1", str(port), str(ct)],
            env=peer_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        arrived = time.perf_counter()
        if res.returncode != 0:
            raise RuntimeError(f"storescu failed: {res.stdout[-2000:]}{res.stderr[-2000:]}")
        result: dict[str, Any] = {
            "mode": mode,
            "ingest_s": arrived - start,
            "ingest_per_s": count / (arrived - start),
            "delivered_during_ingest": delivered(out) if mode != "none" else 0,
        }
        if mode != "none":
            deadline = time.monotonic() + 600
            while delivered(out) < count and time.monotonic() < deadline:
                time.sleep(0.02)
            done = time.perf_counter()
            result["delivered"] = delivered(out)
            result["last_arrival_to_last_delivery_s"] = done - arrived
            result["first_arrival_to_last_delivery_s"] = done - start
            jobs = subprocess.run(
                [*minipacs_cmd(), "jobs", "list", "--config", str(cfg), "--data", str(run_dir / "data"), "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            listed = json.loads(jobs.stdout or "[]")
            result["jobs"] = len(listed)
            result["job_states"] = sorted({j["state"] for j in listed})
        return result
    finally:
        stop(server)
        stop(dest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="none,instance,stable")
    args = ap.parse_args()
    ct = WORK / "ct"
    if not ct.exists():
        subprocess.run([sys.executable, str(Path(__file__).parent / "gen_data.py"), "--small", "0"], check=True)
    count = sum(1 for _ in ct.rglob("*.dcm"))
    modes = args.modes.split(",")
    runs: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:  # order rotated each round
                got = one(WORK / "runs" / f"routing-{mode}", ct, count, mode)
                got["round"] = r
                runs.append(got)
                print(json.dumps(got), flush=True)
    finally:
        stop_all()
    summary = {}
    for mode in modes:
        mine = [x for x in runs if x["mode"] == mode]
        summary[mode] = {
            "ingest_per_s": statistics.median(x["ingest_per_s"] for x in mine),
            "ingest_s": statistics.median(x["ingest_s"] for x in mine),
        }
        if mode != "none":
            summary[mode]["last_arrival_to_last_delivery_s"] = statistics.median(
                x["last_arrival_to_last_delivery_s"] for x in mine
            )
            summary[mode]["jobs"] = statistics.median(x["jobs"] for x in mine)
    doc = {"machine": machine_info(), "count": count, "summary": summary, "runs": runs}
    (WORK / "results_routing.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
