"""Jobs that survive, against real processes: `minipacs serve` and DCMTK storescp.

- A send to a storescp that is down is retried with back-off and delivered once it comes up.
- A send running when the server stops: a clean stop (SIGINT) queues it again without charging
  the attempt; a kill (SIGKILL) leaves the row running, and the next start resumes it, saying
  "the server restarted while it ran".
- Two `minipacs serve` processes on one PostgreSQL index share the queue: every job runs once.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from minipacs.config import default_node_id
from minipacs.core.jobs import RESTART_REASON, SHUTDOWN_REASON
from tests.dicomgen import write_ct
from tests.index.pg import postgres_schema_url
from tests.peers import ServerProcess, dcmtk, free_port, minipacs_cmd, run, start_server, wait_for_port

pytestmark = [pytest.mark.interop, pytest.mark.slow]

FAST_JOBS = {
    "MINIPACS_FSYNC": "false",
    "MINIPACS_JOB_RETRY_SECONDS": "0.3",
    "MINIPACS_JOB_RETRY_MAX_SECONDS": "0.6",
    "MINIPACS_JOB_MAX_ATTEMPTS": "50",
    "MINIPACS_JOB_POLL_SECONDS": "0.1",
    "MINIPACS_JOB_PROGRESS_SECONDS": "0.1",
    "MINIPACS_CONNECT_TIMEOUT": "2",
    "MINIPACS_ACSE_TIMEOUT": "120",  # a peer that never answers keeps the job running
}


def serve(tmp: Path, env: dict[str, str] | None = None, sub: str = "") -> tuple[ServerProcess, str]:
    http_port = free_port()
    folder = tmp / sub if sub else tmp
    folder.mkdir(parents=True, exist_ok=True)
    srv = start_server(folder, env={**FAST_JOBS, "MINIPACS_HTTP_PORT": str(http_port), **(env or {})})
    wait_for_port("127.0.0.1", http_port, proc=srv.proc)
    return srv, f"http://127.0.0.1:{http_port}"


def study_files(tmp: Path, count: int) -> tuple[str, list[Path]]:
    study, series = str(generate_uid()), str(generate_uid())
    files = [
        write_ct(tmp / "src" / f"{n}.dcm", study_uid=study, series_uid=series, InstanceNumber=n + 1)
        for n in range(count)
    ]
    return study, files


def store(srv: ServerProcess, files: list[Path]) -> None:
    res = run([dcmtk("storescu"), "-aec", srv.ae_title, "127.0.0.1", str(srv.port), *map(str, files)])
    assert res.returncode == 0, res.stdout + res.stderr


def register(base: str, ae_title: str, port: int) -> int:
    r = httpx.post(f"{base}/api/nodes", json={"ae_title": ae_title, "host": "127.0.0.1", "port": port})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def job(base: str, job_id: int) -> dict[str, Any]:
    r = httpx.get(f"{base}/api/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_job(base: str, job_id: int, until: Any, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = job(base, job_id)
        if until(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never got there: {found}")
        time.sleep(0.05)


@contextmanager
def storescp(port: int, out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [dcmtk("storescp"), "-od", str(out), "-aet", "STORESCP", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_for_port("127.0.0.1", port, proc=proc)
        except RuntimeError:
            raise RuntimeError(f"storescp did not start: {proc.communicate()[0]!r}") from None
        yield
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@contextmanager
def black_hole(port: int) -> Iterator[None]:
    """A TCP listener that accepts and never says a word: an association request waits for ever."""
    sock = socket.create_server(("127.0.0.1", port))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        sock.close()


def closed_port() -> socket.socket:
    """A port bound but not listening: calls to it are refused, and no outgoing connection can take
    it as its own port meanwhile (a connect to a free local port may otherwise connect to itself)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_send_to_a_storescp_that_is_down_then_comes_up(tmp_path: Path) -> None:
    srv, base = serve(tmp_path)
    try:
        study, files = study_files(tmp_path, 3)
        store(srv, files)
        placeholder = closed_port()
        port = placeholder.getsockname()[1]
        node = register(base, "STORESCP", port)
        r = httpx.post(f"{base}/api/send", json={"node": node, "level": "study", "uids": [study]})
        assert r.status_code == 202 and r.headers["location"] == f"/api/jobs/{r.json()['id']}"
        job_id = r.json()["id"]
        waiting = wait_job(base, job_id, lambda j: j["attempts"] >= 2 and j["state"] == "queued")
        assert "cannot send to 'STORESCP'" in waiting["last_error"] and "next try at" in waiting["message"]
        listed = httpx.get(f"{base}/api/jobs", params={"state": "queued"}).json()
        assert [j["id"] for j in listed] == [job_id]
        placeholder.close()
        with storescp(port, tmp_path / "out"):
            done = wait_job(base, job_id, lambda j: j["state"] in ("done", "failed"))
            assert done["state"] == "done" and done["done"] == 3 and done["attempts"] >= 2, done
        assert len(list((tmp_path / "out").iterdir())) == 3
    finally:
        srv.stop()


def cli_job(data: Path, job_id: int) -> dict[str, Any]:
    res = run(minipacs_cmd("jobs", "show", str(job_id), "--data", str(data), "--json"))
    assert res.returncode == 0, res.stdout + res.stderr
    return dict(json.loads(res.stdout))


def test_a_running_send_survives_a_clean_stop_and_a_kill(tmp_path: Path) -> None:
    port = free_port()
    study, files = study_files(tmp_path, 2)
    srv, base = serve(tmp_path)
    try:
        store(srv, files)
        node = register(base, "SLOW", port)
        with black_hole(port):
            job_id = httpx.post(f"{base}/api/send", json={"node": node, "level": "study", "uids": [study]}).json()["id"]
            running = wait_job(base, job_id, lambda j: j["state"] == "running")
            assert running["runner"] == default_node_id()  # the node id: the host name by default
            assert srv.stop(signal.SIGINT) == 0  # a clean stop: back in the queue, the attempt not charged
            stopped = cli_job(srv.data_dir, job_id)
            assert (stopped["state"], stopped["attempts"]) == ("queued", 0), stopped
            assert stopped["message"] == f"queued again: {SHUTDOWN_REASON}"

            srv, base = serve(tmp_path)  # the same data, a new process: it runs the job again
            running = wait_job(base, job_id, lambda j: j["state"] == "running")
            assert running["attempts"] == 1
            srv.proc.kill()  # no clean stop: the row stays "running"
            srv.proc.wait(10)
        assert cli_job(srv.data_dir, job_id)["state"] == "running"
        with storescp(port, tmp_path / "out"):
            srv, base = serve(tmp_path)
            done = wait_job(base, job_id, lambda j: j["state"] in ("done", "failed"))
        assert done["state"] == "done" and done["done"] == 2, done
        assert done["attempts"] == 2 and done["last_error"] == RESTART_REASON
        assert done["runner"] == default_node_id()
        assert len(list((tmp_path / "out").iterdir())) == 2
    finally:
        srv.stop()


@pytest.mark.postgres
def test_two_servers_on_one_postgresql_run_each_job_once(tmp_path: Path) -> None:
    with postgres_schema_url() as url:
        shared = {"MINIPACS_INDEX_URL": url, "MINIPACS_JOB_CONCURRENCY": "1"}
        a, base_a = serve(tmp_path, {**shared, "MINIPACS_NODE_ID": "node-a"}, sub="a")
        b: ServerProcess | None = None
        try:
            study, files = study_files(tmp_path, 1)
            store(a, files)
            # the second node uses the same index and, as in a scale-out, the same storage
            b, base_b = serve(tmp_path, {**shared, "MINIPACS_NODE_ID": "node-b"}, sub="a")
            port = free_port()
            with storescp(port, tmp_path / "out"):
                node = register(base_a, "STORESCP", port)
                ids = []
                for n in range(16):
                    base = base_a if n % 2 else base_b
                    r = httpx.post(f"{base}/api/send", json={"node": node, "level": "study", "uids": [study]})
                    assert r.status_code == 202, r.text
                    ids.append(r.json()["id"])
                done = [wait_job(base_a, i, lambda j: j["state"] in ("done", "failed")) for i in ids]
            assert {j["state"] for j in done} == {"done"} and {j["attempts"] for j in done} == {1}
            assert {j["runner"] for j in done} == {"node-a", "node-b"}
            # cancel and retry from either node: the row is the truth
            listed = httpx.get(f"{base_b}/api/jobs", params={"limit": 100}).json()
            assert sorted(j["id"] for j in listed) == sorted(ids)
        finally:
            if b is not None:
                b.stop()
            a.stop()
