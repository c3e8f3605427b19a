"""End to end: a real `minipacs serve` (bootstrap's wiring) anonymizes over HTTP, as a job above
the threshold and at once below it, and answers the mapping."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from minipacs.cli.main import main
from tests.core.test_anonymize import conformant_ct
from tests.peers import free_port, start_server, wait_for_port

STUDY = "1.2.826.0.1.3680043.10.3.1"


def job_result(base: str, answer: httpx.Response) -> dict[str, Any]:
    """The result of the job a 202 answer names, once it ended."""
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 60
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/jobs/{answer.json()['job']}", timeout=30).json()
        if job["state"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert job["state"] == "done", job
    result: dict[str, Any] = job["result"]
    return result


def test_a_served_archive_anonymizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for n in range(3):
        series = f"{STUDY}.{1 + n // 2}"
        conformant_ct(STUDY, series, f"{series}.{n + 1}").save_as(source / f"{n}.dcm", enforce_file_format=True)
    assert main(["import", "--data", str(tmp_path / "data"), "--no-progress", str(source)]) == 0
    capsys.readouterr()
    port = free_port()
    env = {
        "MINIPACS_HTTP_PORT": str(port),
        "MINIPACS_ANONYMIZE_JOB_THRESHOLD": "2",
        "MINIPACS_JOB_POLL_SECONDS": "0.1",
        "MINIPACS_JOB_PROGRESS_SECONDS": "0.1",
    }
    srv = start_server(tmp_path, env=env)
    try:
        wait_for_port("127.0.0.1", port, proc=srv.proc)
        base = f"http://127.0.0.1:{port}/api"
        queued = httpx.post(f"{base}/studies/{STUDY}/anonymize", json={}, timeout=60)
        assert queued.status_code == 202, queued.text
        new_study = job_result(base, queued)["study"]
        assert httpx.get(f"{base}/studies/{new_study}", timeout=30).status_code == 200
        body = {"options": ["retain-uids"]}
        refused = httpx.post(f"{base}/studies/{STUDY}/anonymize", json=body, timeout=60)
        assert refused.status_code == 400 and "keep_original false" in refused.text  # the UIDs would collide
        body["keep_original"] = False
        refused = httpx.post(f"{base}/series/{STUDY}.2/anonymize", json=body, timeout=60)
        assert refused.status_code == 400 and "the whole study" in refused.text  # a study has one patient
        replaced = job_result(base, httpx.post(f"{base}/studies/{STUDY}/anonymize", json=body, timeout=60))
        assert replaced["study"] == STUDY  # Retain UIDs: the same UIDs
        assert replaced["original_deleted"] is True and replaced["instances"] == 3
        stored = httpx.get(f"{base}/studies/{STUDY}", timeout=30).json()
        assert stored["PatientID"].startswith("ANON"), stored  # replaced in place
        mapping = httpx.get(f"{base}/anonymization/mappings", params={"value": new_study}, timeout=30).json()
        assert [m["original"] for m in mapping["mappings"]] == [STUDY]
    finally:
        assert srv.stop() == 0, srv.log_text()
