"""4 parallel associations through HAProxy to 2 minipacs nodes vs 1 node (issue 11).

The small set of bench_store.py (500 MR instances of ~9.5 kB in 4 folders), one DCMTK storescu per
folder started together, sent to HAProxy (TCP mode, round robin per connection) in front of 1 or 2
`minipacs serve` nodes on one fresh PostgreSQL database and one shared data folder (fsync on), then
counted by C-FIND at the image level through each node. Rounds alternate 1 and 2 nodes; the median
instances/s is reported. The S3 blob store is not in it (not built yet).

On this 2-core machine two nodes share the same two cores (and PostgreSQL, HAProxy and the four
storescu run beside them), so this measures that nothing breaks or serialises when nodes are added,
not how far a second machine would take it.

  python bench/bench_scaleout.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import (
    WORK,
    free_port,
    machine_info,
    minipacs_cmd,
    peer_env,
    pg_create_database,
    pg_drop_database,
    spawn,
    stop,
    wait_listening,
)
from bench_store import load_set, send

HAPROXY = "/usr/sbin/haproxy"
DATABASE = "minipacs_bench_scaleout"


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


def one_round(nodes: int, run_dir: Path) -> float:
    data = load_set("small4", quick=False)
    url = pg_create_database(DATABASE)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        shared = run_dir / "data"  # one data folder for all nodes (each node's data/ is a link to it)
        shared.mkdir(parents=True)
        ports = []
        for n in range(nodes):
            port = free_port()
            home = run_dir / f"node{n}"
            home.mkdir()
            link = home / "data"
            link.symlink_to(shared, target_is_directory=True)
            env = {
                "MINIPACS_INDEX_URL": url,
                "MINIPACS_NODE_ID": f"node{n}",
                "MINIPACS_LOG_LEVEL": "WARNING",
                "MINIPACS_HTTP_PORT": "0",
            }
            cmd = [*minipacs_cmd(), "serve", "--data", str(link), "--port", str(port), "--host", "127.0.0.1"]
            proc = spawn(cmd, home / "server.log", peer_env(env))
            procs.append(proc)
            wait_listening(proc, port, timeout=60.0, log=home / "server.log")
            ports.append(port)
        front = free_port()
        (run_dir / "haproxy.cfg").write_text(haproxy_config(front, ports))
        lb = spawn([HAPROXY, "-db", "-f", str(run_dir / "haproxy.cfg")], run_dir / "haproxy.log")
        procs.append(lb)
        wait_listening(lb, front, timeout=30.0, log=run_dir / "haproxy.log")
        took = send(data, "MINIPACS", front, run_dir)
        for port in ports:
            stored = count_stored(port, data.study_uid)
            if stored != data.count:
                raise RuntimeError(f"{stored} of {data.count} instances found through port {port}")
        return data.count / took
    finally:
        for proc in reversed(procs):
            stop(proc)
        pg_drop_database(DATABASE)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[int, list[float]] = {1: [], 2: []}
    for rnd in range(args.rounds):
        for nodes in (1, 2) if rnd % 2 == 0 else (2, 1):
            rate = one_round(nodes, WORK / "scaleout" / f"{nodes}-{rnd}")
            rates[nodes].append(rate)
            print(f"round {rnd}, {nodes} node(s): {rate:.0f} instances/s", flush=True)
    print("\n| nodes behind HAProxy | instances/s (median) | rounds |")
    print("|---|---|---|")
    for nodes, values in rates.items():
        print(f"| {nodes} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")
    (WORK / "results_scaleout.json").write_text(
        json.dumps(
            {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine_info(), "rates": rates},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
