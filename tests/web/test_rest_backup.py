"""Backups from the server (core/backup.py, web/rest_backup.py): ``POST /api/backup`` queues a job
into ``backup_dir`` (admin only; 409 without it), ``GET /api/backup`` shows the last one; the job's
backup is a data folder; the settings are checked."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive, storage_dir
from minipacs.config import ConfigError, Settings
from minipacs.core.backup import register_backup_job
from minipacs.core.jobs import JobQueue, JobSettings, JobState
from minipacs.core.metadata import MetadataStore
from minipacs.core.storage_check import check_storage
from minipacs.core.users import Role, User, hash_password
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.web.conftest import part10

USERS = (
    User("ada", hash_password("a-pass", n=2**4), Role.ADMIN),
    User("oli", hash_password("o-pass", n=2**4), Role.OPERATOR),
)


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def _serve(tmp_path: Path, body: Any, **settings: Any) -> None:
    async def main() -> None:
        config = Settings(data_dir=tmp_path / "data", fsync=False, users=USERS, **settings)
        archive = await open_archive(config)
        metadata = MetadataStore(archive)
        metadata.attach()
        queue = JobQueue(archive, JobSettings(poll_seconds=0.05, progress_seconds=0.1, stale_seconds=5))
        if config.backup_dir:
            register_backup_job(queue, archive, Path(config.backup_dir), storage_dir(Path(config.backup_dir)))
        app = create_app(AppContext(config, archive, metadata, jobs=queue))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                await body(client, queue)
        finally:
            await queue.close()
            await metadata.close()
            await archive.close()

    asyncio.run(main())


def test_a_backup_job_from_rest_and_its_status(tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    ada, oli = basic("ada", "a-pass"), basic("oli", "o-pass")

    async def body(client: httpx.AsyncClient, queue: JobQueue) -> None:
        for _ in range(3):
            r = await client.post("/api/instances", content=part10(study_uid=generate_uid()), headers=ada)
            assert r.status_code == 200
        status = (await client.get("/api/backup", headers=ada)).json()
        assert status == {"backup_dir": str(dest), "interval_seconds": 86400.0, "last_job": None}
        page = (await client.get("/ui/overview", headers=ada)).text
        assert "No backup has succeeded" in page and 'id="last-backup"' not in page
        assert 'id="backup-run"' in page  # an admin may back up now
        assert 'id="backup-run"' not in (await client.get("/ui/overview", headers=oli)).text  # an operator may not
        assert "minipacs_backup_last_success_timestamp_seconds" not in (await client.get("/metrics", headers=ada)).text
        assert (await client.post("/api/backup", headers=oli)).status_code == 403  # an operator may not
        assert (await client.get("/api/backup", headers=oli)).status_code == 403
        await queue.start()
        r = await client.post("/api/backup", headers=ada)
        assert r.status_code == 202 and r.json()["kind"] == "backup"
        job = await queue.wait(r.json()["id"], timeout=60)
        assert job.state is JobState.DONE, job.last_error
        assert job.details["instances"] == 3 and job.details["copied"] == 3 and job.details["lost"] == []
        assert job.message.startswith(f"backup of 3 instance(s) in {dest}: 3 file(s) copied")
        last = (await client.get("/api/backup", headers=ada)).json()["last_job"]
        assert last["id"] == job.id and last["state"] == "done"
        page = (await client.get("/ui/overview", headers=ada)).text
        assert 'id="last-backup"' in page and "backup of 3 instance(s)" in page
        scraped = (await client.get("/metrics", headers=ada)).text
        [line] = [x for x in scraped.splitlines() if x.startswith("minipacs_backup_last_success_timestamp_seconds ")]
        assert abs(float(line.split()[1]) - time.time()) < 120

    _serve(tmp_path, body, backup_dir=str(dest))

    async def restored() -> bool:
        archive = await open_archive(Settings(data_dir=dest, fsync=False))
        try:
            return (await check_storage(archive)).consistent and (await archive.count_instances()) == 3
        finally:
            await archive.close()

    assert asyncio.run(restored())


def test_without_backup_dir_a_backup_from_rest_is_409(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, queue: JobQueue) -> None:
        r = await client.post("/api/backup", headers=basic("ada", "a-pass"))
        assert r.status_code == 409 and r.json()["error"]["code"] == "no_backup_dir"
        assert "minipacs backup DEST" in r.json()["error"]["message"]
        status = (await client.get("/api/backup", headers=basic("ada", "a-pass"))).json()
        assert status["backup_dir"] == "" and status["interval_seconds"] == 0

    _serve(tmp_path, body)


def test_a_backup_dir_inside_the_data_folder_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    async def body(client: httpx.AsyncClient, queue: JobQueue) -> None:
        await queue.start()
        r = await client.post("/api/backup", headers=basic("ada", "a-pass"))
        job = await queue.wait(r.json()["id"], timeout=60)
        assert job.state is JobState.FAILED and "must not contain each other" in job.last_error

    _serve(tmp_path, body, backup_dir=str(tmp_path / "data" / "backup"))


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"backup_dir": "relative/folder"}, "backup_dir 'relative/folder' must be an absolute path"),
        ({"backup_interval_seconds": -1}, "backup_interval_seconds must be 0"),
    ],
)
def test_backup_settings_are_checked(tmp_path: Path, settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Settings(data_dir=tmp_path, **settings).validate()
