"""GET /metrics (services/metrics.py, docs/METRICS.md) of a real `minipacs serve`, fed by DCMTK storescu:
associations by calling AE and outcome, instances and bytes, failures by status, latency histograms,
jobs by state, storage; and the association-outcome table row by row."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from minipacs.core.model import AssociationRecord
from minipacs.services.metrics import END_OUTCOMES, association_outcome
from tests.dicomgen import write_ct
from tests.peers import free_port, start_server

STORESCU = "/usr/bin/storescu"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` (labels in any order; others allowed), 0 when absent."""
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def test_metrics_of_a_running_server(tmp_path: Path) -> None:
    http = free_port()
    config = tmp_path / "minipacs.toml"  # and a retention rule, run periodically as a job by serve
    config.write_text('retention_interval_seconds = 0.5\n[[retention]]\nname = "ten-years"\nolder_than_days = 3650\n')
    srv = start_server(
        tmp_path,
        "--config",
        str(config),
        env={
            "MINIPACS_HTTP_PORT": str(http),
            "MINIPACS_DUPLICATE_POLICY": "reject",
            "MINIPACS_JOB_POLL_SECONDS": "0.2",
        },
    )
    try:
        files = [write_ct(tmp_path / f"in/{i}.dcm") for i in range(2)]
        send = [STORESCU, "-aet", "CT01", "-aec", "MINIPACS", "127.0.0.1", str(srv.port)]
        subprocess.run([*send, *map(str, files)], check=True, capture_output=True, timeout=60)
        subprocess.run([*send, str(files[0])], capture_output=True, timeout=60)  # a duplicate: refused
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/studies", timeout=30) as response:
            assert response.status == 200  # one query through the engine
        deadline = time.monotonic() + 60
        while True:  # the association counters move when the log record is written, after the release
            text = scrape(http)
            if value(text, "minipacs_associations_total", calling_ae="CT01") >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert value(text, "minipacs_associations_total", calling_ae="CT01", role="acceptor", outcome="released") == 2
        assert value(text, "minipacs_ingest_instances_total", origin="dicom", calling_ae="CT01", outcome="stored") == 2
        sizes = sum(f.stat().st_size for f in files)
        assert sizes * 0.9 < value(text, "minipacs_ingest_bytes_total", origin="dicom", calling_ae="CT01") < sizes * 1.5
        assert value(text, "minipacs_ingest_seconds_count", origin="dicom") == 2
        assert value(text, "minipacs_dimse_operations_total", op="C-STORE", outcome="stored") == 2
        failed = [line for line in text.splitlines() if line.startswith("minipacs_dimse_failures_total{")]
        assert len(failed) == 1 and 'op="C-STORE"' in failed[0] and 'status="0x' in failed[0], failed
        assert value(text, "minipacs_query_seconds_count", level="STUDY") >= 1
        assert "minipacs_jobs{" in text
        while True:  # serve queues a retention run every retention_interval_seconds; it finds nothing to delete
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/jobs?kind=retention", timeout=30) as response:
                jobs = json.loads(response.read())
            if any(job["state"] == "done" for job in jobs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        done = [job for job in jobs if job["state"] == "done"]
        assert done and done[0]["message"].startswith("retention deleted 0 study(ies)"), jobs
        assert value(scrape(http), "minipacs_jobs", state="done") >= 1
        assert value(text, "minipacs_stored", kind="instances") == 2
        assert value(text, "minipacs_storage_bytes") > 0
        assert "minipacs_associations_open" in text
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("accepted", "end_reason", "outcome"),
    [
        (False, "", "rejected"),
        *[(True, prefix + " (detail)", outcome) for prefix, outcome in END_OUTCOMES],
        (True, "connection closed by peer without release", "broken"),
        (True, "protocol error (...)", "broken"),
    ],
)
def test_association_outcomes(accepted: bool, end_reason: str, outcome: str) -> None:
    import datetime as dt

    record = AssociationRecord(dt.datetime.now(dt.UTC), "acceptor", "A", "B", "h", 1, accepted, end_reason=end_reason)
    assert association_outcome(record) == outcome
