"""`minipacs overview`: the overview page's figures from the command line (issue 13, "Seeing it")."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.cli.main import main
from minipacs.config import Settings
from minipacs.core.jobs import JobContext, JobFailed, JobQueue, JobSettings
from minipacs.core.model import Origin
from tests.dicomgen import write_ct


def test_overview_shows_arrivals_storage_and_a_failing_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, study = tmp_path / "data", str(generate_uid())

    async def down(job: JobContext) -> str:
        raise JobFailed("AI_NODE (127.0.0.1:1) refused the connection: is its DICOM service running?")

    async def prepare() -> None:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        queue = JobQueue(archive, JobSettings(poll_seconds=0.05, progress_seconds=0.05))
        queue.register("send", down)
        await queue.start()
        try:
            for n in range(2):
                await archive.import_file(write_ct(tmp_path / f"{n}.dcm", study_uid=study), Origin("test"))
            job = await queue.submit("send", "send a study to AI_NODE", {}, max_attempts=1)
            await queue.wait(job.id, timeout=30)
        finally:
            await queue.close()
            await archive.close()

    asyncio.run(prepare())
    assert main(["overview", "--data", str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["arrived"]["last_hour"]["instances"] == 2 and out["arrived"]["last_hour"]["studies"] == 1
    assert out["arrived"]["last_day"]["instances"] == 2
    assert out["storage"]["instances"] == 2 and out["storage"]["studies"] == 1
    assert out["jobs"]["failed"] == 1
    (failing,) = out["failing_jobs"]
    assert failing["kind"] == "send" and "is its DICOM service running?" in failing["last_error"]

    assert main(["overview", "--data", str(data)]) == 0
    text = capsys.readouterr().out
    assert "arrived, last hour: 2 instance(s) in 1 study(ies)" in text
    assert "stored: 1 studies, 2 instances" in text
    assert "0 queued, 0 running, 1 failed" in text
    assert "refused the connection: is its DICOM service running?" in text
    assert "last backup: none has succeeded" in text and out["last_backup"] is None


def test_a_backup_the_command_made_is_the_last_backup_and_a_failed_one_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`minipacs backup` from cron is recorded as a done "backup" job: the overview and /metrics read the
    last backup from the jobs, so without the record a nightly backup looked like none at all."""
    data = tmp_path / "data"

    async def prepare() -> None:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        try:
            await archive.import_file(write_ct(tmp_path / "1.dcm", study_uid=str(generate_uid())), Origin("test"))
        finally:
            await archive.close()

    asyncio.run(prepare())
    assert main(["backup", "--data", str(data), str(data / "inside")]) == 2  # refused: inside the archive
    capsys.readouterr()
    assert main(["overview", "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last_backup"] is None  # a refused backup is not recorded

    assert main(["backup", "--data", str(data), str(tmp_path / "nightly")]) == 0
    capsys.readouterr()
    assert main(["overview", "--data", str(data), "--json"]) == 0
    last = json.loads(capsys.readouterr().out)["last_backup"]
    assert last["kind"] == "backup" and last["state"] == "done"
    assert last["runner"].startswith("minipacs backup command (") and last["instances"] == 1 and last["copied"] == 1
    assert last["description"] == f"backup into {tmp_path / 'nightly'}" and "1 instance" in last["message"]
    assert main(["overview", "--data", str(data)]) == 0
    assert "last backup: " in (text := capsys.readouterr().out) and "none has succeeded" not in text
    assert main(["jobs", "list", "--data", str(data), "--json"]) == 0
    assert "minipacs backup command" in capsys.readouterr().out
