"""`minipacs jobs list|show|cancel|retry`, in process, on a data folder whose index holds jobs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from minipacs.bootstrap import open_archive
from minipacs.cli.main import main
from minipacs.config import Settings
from minipacs.core.jobs import JobContext, JobFailed, JobQueue


def make_jobs(data: Path) -> tuple[int, int]:
    """One failed job and one queued (no runner: it stays queued)."""

    async def run() -> tuple[int, int]:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        try:
            queue = JobQueue(archive)

            async def refuse(job: JobContext) -> str:
                raise JobFailed("the peer said no")

            queue.register("send", refuse)
            failed = await queue.submit("send", "send 2 instance(s) to 'X'", {"node": 1, "uids": ["1.2"]}, total=2)
            await queue.start()
            await queue.wait(failed.id, timeout=10)
            await queue.close()
            queued = await queue.submit("send", "send 1 instance(s) to 'Y'", {"node": 2, "uids": ["1.3"]})
            return failed.id, queued.id
        finally:
            await archive.close()

    return asyncio.run(run())


def test_jobs_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    failed, queued = make_jobs(data)
    assert main(["jobs", "list", "--data", str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split()[0]) for line in lines] == [queued, failed]
    assert "failed" in lines[1] and "the peer said no" in lines[1] and "0/2 (" not in lines[1]
    assert main(["jobs", "list", "--data", str(data), "--state", "failed", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in listed] == [failed] and listed[0]["params"] == {"node": 1, "uids": ["1.2"]}
    assert main(["jobs", "show", str(failed), "--data", str(data)]) == 0
    shown = capsys.readouterr().out
    assert f"job {failed}: send 2 instance(s) to 'X'" in shown and "attempts  1 of 5" in shown
    assert "last error the peer said no" in shown
    assert main(["jobs", "cancel", str(queued), "--data", str(data)]) == 0
    assert capsys.readouterr().out.startswith(f"job {queued}: cancelled")
    assert main(["jobs", "cancel", str(queued), "--data", str(data)]) == 1  # already cancelled
    assert "nothing to cancel" in capsys.readouterr().err
    assert main(["jobs", "retry", str(failed), "--data", str(data), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["state"], again["attempts"]) == ("queued", 0)
    assert main(["jobs", "show", "424242", "--data", str(data)]) == 2
    assert "no job 424242" in capsys.readouterr().err
    assert main(["jobs", "list", "--data", str(data), "--limit", "0"]) == 2
