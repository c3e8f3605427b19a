"""`minipacs serve` queues the periodic retention run as a job (docs/RETENTION.md): with a rule whose
studies are all younger than its age, the job runs, deletes nothing and says so; stored studies stay."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.dicomgen import write_ct
from tests.peers import dcmtk, free_port, run, start_server, wait_for_port

pytestmark = [pytest.mark.interop]


def test_serve_runs_the_periodic_retention_job(tmp_path: Path) -> None:
    http = free_port()
    config = tmp_path / "minipacs.toml"
    config.write_text('retention_interval_seconds = 0.5\n[[retention]]\nname = "ten-years"\nolder_than_days = 3650\n')
    srv = start_server(
        tmp_path,
        "--config",
        str(config),
        env={"MINIPACS_HTTP_PORT": str(http), "MINIPACS_JOB_POLL_SECONDS": "0.2", "MINIPACS_FSYNC": "false"},
    )
    try:
        wait_for_port("127.0.0.1", http, proc=srv.proc)
        files = [write_ct(tmp_path / f"in/{i}.dcm") for i in range(2)]
        res = run([dcmtk("storescu"), "-aec", srv.ae_title, "127.0.0.1", str(srv.port), *map(str, files)])
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 60
        jobs: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/jobs?kind=retention", timeout=30) as response:
                jobs = json.loads(response.read())
            if any(job["state"] == "done" for job in jobs):
                break
            time.sleep(0.2)
        done = [job for job in jobs if job["state"] == "done"]
        assert done and str(done[0]["message"]).startswith("retention deleted 0 study(ies)"), jobs
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/stats", timeout=30) as response:
            assert json.loads(response.read())["instances"] == 2
    finally:
        srv.stop()
