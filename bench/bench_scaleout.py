"""4 parallel associations through HAProxy to 2 nodes vs 1 node (issue 11).

The small set of bench_store.py (500 MR instances of ~9.5 kB in 4 folders), one DCMTK storescu per
folder started together, sent to HAProxy (TCP mode, round robin per connection) in front of 1 or 2
nodes on one fresh PostgreSQL database, then counted by C-FIND at the image level through each
node. Rounds alternate 1 and 2 nodes; the median instances/s is reported. Modes (``--modes``):

  folder      `minipacs serve` nodes sharing one data folder (fsync on)
  s3          `minipacs serve` nodes each with its OWN data folder, objects in one S3 bucket
              (storage = s3://..., the deployment of docs/SCALE-OUT.md). The S3 server is moto's
              standalone server on loopback, started here: a local EMULATOR (Python, in memory, on
              the same cores), not real S3 latency or throughput.
  orthanc-pg  Orthanc (Debian) with the orthanc-postgresql index plugin, "Lock": false so several
              Orthanc share the database, and one shared StorageDirectory (Orthanc's own
              scale-out recipe: shared index, shared storage).

Every DCMTK program and Orthanc runs with ``TCP_NODELAY=1`` (_common.peer_env).

On this 2-core machine two nodes share the same two cores (and PostgreSQL, HAProxy, the S3
emulator and the four storescu run beside them), so this measures that nothing breaks or
serialises when nodes are added, not how far a second machine would take it.

  python bench/bench_scaleout.py [--rounds 3] [--modes folder,s3,orthanc-pg]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import (
    WORK,
    cpu_seconds,
    free_port,
    machine_info,
    minipacs_cmd,
    orthanc_pg_config,
    peer_env,
    pg_create_database,
    pg_drop_database,
    spawn,
    start_orthanc,
    stop,
    wait_listening,
)
from bench_store import ORTHANC_PG_INDEX, found, load_set, send

HAPROXY = "/usr/sbin/haproxy"
DATABASE = "minipacs_bench_scaleout"
MODES = ("folder", "s3", "orthanc-pg")
#: What boto3 in minipacs signs with (moto accepts any key).
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "minipacs-bench",
    "AWS_SECRET_ACCESS_KEY": "minipacs-bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Emulator:
    """moto's standalone S3 server on loopback (``moto[server]``, the test dependency): a local
    emulator, in memory, sharing this machine's cores; a bucket per round."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = spawn(cmd, run_dir / "moto.log", dict(os.environ, **S3_CREDENTIALS))
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not start; see {run_dir / 'moto.log'}") from None
                time.sleep(0.2)
        import boto3

        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def new_bucket(self) -> str:
        name = "bench-" + uuid.uuid4().hex[:16]
        self.client.create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> int:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sum(page.get("KeyCount", 0) for page in pages)

    def close(self) -> None:
        self.client.close()
        stop(self.proc)


def haproxy_config(port: int, backends: list[int]) -> str:
    servers = "\n".join(f"    server node{n} 127.0.0.1:{p}" for n, p in enumerate(backends))
    return (
        "global\n    maxconn 256\ndefaults\n    mode tcp\n    timeout connect 5s\n"
        "    timeout client 300s\n    timeout server 300s\n"
        f"frontend dicom\n    bind 127.0.0.1:{port}\n    default_backend minipacs\n"
        f"backend minipacs\n    balance roundrobin\n{servers}\n"
    )


def count_stored(port: int, study: str) -> int:
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="MINIPACS")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    query.NumberOfStudyRelatedInstances = ""
    found = 0
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
            found = int(identifier.NumberOfStudyRelatedInstances)
    assoc.release()
    return found


def _loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def _start_minipacs_node(
    n: int, run_dir: Path, url: str, mode: str, shared: Path, s3: S3Emulator | None, bucket: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    home = run_dir / f"node{n}"
    home.mkdir()
    data = home / "data"
    if mode == "folder":  # one data folder for all nodes (each node's data/ is a link to it)
        data.symlink_to(shared, target_is_directory=True)
    env = {
        "MINIPACS_INDEX_URL": url,
        "MINIPACS_NODE_ID": f"node{n}",
        "MINIPACS_LOG_LEVEL": "WARNING",
        "MINIPACS_HTTP_PORT": "0",
    }
    if mode == "s3":  # its own data folder; the objects in the shared bucket
        assert s3 is not None
        env.update(S3_CREDENTIALS)
        env.update(
            {
                "MINIPACS_STORAGE": f"s3://{bucket}/archive",
                "MINIPACS_S3_ENDPOINT": s3.endpoint,
                "MINIPACS_S3_REGION": "us-east-1",
            }
        )
    cmd = [*minipacs_cmd(), "serve", "--data", str(data), "--port", str(port), "--host", "127.0.0.1"]
    proc = spawn(cmd, home / "server.log", peer_env(env))
    wait_listening(proc, port, timeout=60.0, log=home / "server.log")
    return proc, port


def _start_orthanc_node(n: int, run_dir: Path, shared: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    home = run_dir / f"node{n}"
    config = orthanc_pg_config(DATABASE)
    config["StorageDirectory"] = str(shared)  # shared by the nodes; the index is in PostgreSQL
    config["Name"] = f"bench-node{n}"
    proc = start_orthanc(home, port, free_port(), plugins=[ORTHANC_PG_INDEX], config=config)
    return proc, port


def one_round(mode: str, nodes: int, run_dir: Path, s3: S3Emulator | None) -> dict[str, Any]:
    data = load_set("small4", quick=False)
    url = pg_create_database(DATABASE)
    procs: list[subprocess.Popen[bytes]] = []
    bucket = s3.new_bucket() if s3 is not None else ""
    try:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        shared = run_dir / "data"
        shared.mkdir(parents=True)
        ports = []
        for n in range(nodes):
            if mode == "orthanc-pg":
                proc, port = _start_orthanc_node(n, run_dir, shared)
            else:
                proc, port = _start_minipacs_node(n, run_dir, url, mode, shared, s3, bucket)
            procs.append(proc)
            ports.append(port)
        front = free_port()
        (run_dir / "haproxy.cfg").write_text(haproxy_config(front, ports))
        lb = spawn([HAPROXY, "-db", "-f", str(run_dir / "haproxy.cfg")], run_dir / "haproxy.log")
        procs.append(lb)
        wait_listening(lb, front, timeout=30.0, log=run_dir / "haproxy.log")
        load_before = _loadavg()
        moto_cpu = cpu_seconds(s3.proc.pid) if s3 is not None else 0.0
        aec = "ORTHANC" if mode == "orthanc-pg" else "MINIPACS"
        took = send(data, aec, front, run_dir)
        moto_cpu = cpu_seconds(s3.proc.pid) - moto_cpu if s3 is not None else 0.0
        for port in ports:
            stored = found(data, aec, port, run_dir) if mode == "orthanc-pg" else count_stored(port, data.study_uid)
            if stored != data.count:
                raise RuntimeError(f"{stored} of {data.count} instances found through port {port}")
        if s3 is not None and (objects := s3.objects(bucket)) != data.count:
            raise RuntimeError(f"{objects} objects in the bucket for {data.count} instances")
        return {
            "rate": data.count / took,
            "load_before": load_before,
            "load_after": _loadavg(),
            "s3_emulator_cpu_s": round(moto_cpu, 2),
        }
    finally:
        for proc in reversed(procs):
            stop(proc)
        pg_drop_database(DATABASE)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="s3,orthanc-pg", help=f"comma-separated, of {', '.join(MODES)}")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; use {', '.join(MODES)}")
    if "orthanc-pg" in modes and not ORTHANC_PG_INDEX.exists():
        parser.error(f"{ORTHANC_PG_INDEX} is missing: apt-get install -y orthanc-postgresql")
    info = machine_info()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {m: {1: [], 2: []} for m in modes}
    s3 = S3Emulator(WORK / "scaleout") if "s3" in modes else None
    try:
        for rnd in range(args.rounds):
            for mode in modes:
                for nodes in (1, 2) if rnd % 2 == 0 else (2, 1):
                    run = one_round(
                        mode, nodes, WORK / "scaleout" / f"{mode}-{nodes}-{rnd}", s3 if mode == "s3" else None
                    )
                    runs[mode][nodes].append(run)
                    extra = f", S3 emulator CPU {run['s3_emulator_cpu_s']:.1f} s" if mode == "s3" else ""
                    print(
                        f"round {rnd}, {mode}, {nodes} node(s): {run['rate']:.0f} instances/s "
                        f"(load {run['load_before']} -> {run['load_after']}{extra})",
                        flush=True,
                    )
    finally:
        if s3 is not None:
            s3.close()
    print("\n| mode | nodes behind HAProxy | instances/s (median) | rounds | load average before each round |")
    print("|---|---|---|---|---|")
    for mode, by_nodes in runs.items():
        for nodes, values in by_nodes.items():
            rates = [v["rate"] for v in values]
            print(
                f"| {mode} | {nodes} | {statistics.median(rates):.0f} | {', '.join(f'{r:.0f}' for r in rates)} "
                f"| {'; '.join(v['load_before'] for v in values)} |"
            )
    (WORK / "results_scaleout.json").write_text(
        json.dumps(
            {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": info, "runs": runs},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
