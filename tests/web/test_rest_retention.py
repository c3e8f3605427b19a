"""Retention over REST (web/rest_retention.py): the rules, the dry run, a run queued (admin only),
and the CLI `minipacs retention` (dry run, then a run)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from minipacs.bootstrap import open_archive
from minipacs.cli.main import main
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.jobs import JobQueue, JobSettings, JobState
from minipacs.core.metadata import MetadataStore
from minipacs.core.model import Origin
from minipacs.core.retention import RetentionRule, register_retention_job
from minipacs.core.users import Role, User, hash_password
from minipacs.index.schema import Study
from minipacs.web.app import create_app
from minipacs.web.types import AppContext
from tests.web.conftest import part10

RULES = (RetentionRule("month", older_than_days=30), RetentionRule("quota", max_storage_bytes=10**12))


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


async def old_study(client: httpx.AsyncClient, archive: Archive, days: float, headers: Any = None) -> str:
    study = generate_uid()
    assert (await client.post("/api/instances", content=part10(study_uid=study), headers=headers)).status_code == 200
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    await archive.write(
        lambda conn: conn.execute(update(Study).where(Study.study_instance_uid == study).values(updated_at=when))
    )
    return study


def test_preview_run_and_roles(tmp_path: Path) -> None:
    users = (
        User("ada", hash_password("a-pass", n=2**4), Role.ADMIN),
        User("oli", hash_password("o-pass", n=2**4), Role.OPERATOR),
    )
    ada, oli = basic("ada", "a-pass"), basic("oli", "o-pass")

    async def body(client: httpx.AsyncClient, archive: Archive, queue: JobQueue) -> None:
        old = await old_study(client, archive, 40, ada)
        await old_study(client, archive, 1, ada)
        rules = (await client.get("/api/retention", headers=oli)).json()
        assert [r["name"] for r in rules["rules"]] == ["month", "quota"] and rules["max_deletions"] == 1000
        preview = (await client.get("/api/retention/preview", headers=oli)).json()
        assert preview["dry_run"] is True and [s["study"] for s in preview["studies"]] == [old]
        assert preview["studies"][0]["rule"] == "month" and preview["freed_bytes"] > 0
        assert (await client.get("/api/retention/preview?rule=quota", headers=oli)).json()["studies"] == []
        assert (await client.get("/api/retention/preview?rule=nope", headers=oli)).status_code == 404
        assert len((await client.get("/api/studies", headers=oli)).json()) == 2  # the preview deleted nothing
        assert (await client.post("/api/retention/run", headers=oli)).status_code == 403
        await queue.start()
        try:
            r = await client.post("/api/retention/run", headers=ada)
            assert r.status_code == 202 and r.json()["kind"] == "retention"
            job = await queue.wait(r.json()["id"], timeout=60)
            assert job.state is JobState.DONE and [d["study"] for d in job.details["deleted"]] == [old]
        finally:
            await queue.close()
        changes = (await client.get("/api/changes", headers=oli)).json()["changes"]
        assert {c["reason"] for c in changes if c["type"] == "Deleted"} == {"retention:month"}
        assert old not in {s["StudyInstanceUID"] for s in (await client.get("/api/studies", headers=oli)).json()}

    async def main_() -> None:
        config = Settings(data_dir=tmp_path / "data", fsync=False, users=users, retention=RULES)
        archive = await open_archive(config)
        metadata = MetadataStore(archive)
        metadata.attach()
        queue = JobQueue(archive, JobSettings(poll_seconds=0.05, progress_seconds=0.1, stale_seconds=5))
        register_retention_job(queue, archive, RULES, 1000)
        app = create_app(AppContext(config, archive, metadata, jobs=queue))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                await body(client, archive, queue)
        finally:
            await metadata.close()
            await archive.close()

    asyncio.run(main_())


def test_cli_dry_run_then_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    config = tmp_path / "m.toml"
    config.write_text(f'data_dir = "{data}"\nfsync = false\n[[retention]]\nname = "month"\nolder_than_days = 30\n')

    async def setup() -> str:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        try:
            path = tmp_path / "x.dcm"
            study = generate_uid()
            path.write_bytes(part10(study_uid=study))
            await archive.import_file(path, Origin("import", "", "", "", 0))
            when = dt.datetime.now(dt.UTC) - dt.timedelta(days=31)
            await archive.write(
                lambda conn: conn.execute(
                    update(Study).where(Study.study_instance_uid == study).values(updated_at=when)
                )
            )
            return study
        finally:
            await archive.close()

    async def remaining() -> list[str]:
        archive = await open_archive(Settings(data_dir=data, fsync=False))
        try:
            return list(await archive.read(lambda c: c.execute(select(Study.study_instance_uid)).scalars().all()))
        finally:
            await archive.close()

    study = asyncio.run(setup())
    assert main(["retention", "--config", str(config), "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] is True and [s["study"] for s in out["studies"]] == [study]
    assert asyncio.run(remaining()) == [study]
    assert main(["retention", "--config", str(config)]) == 0
    assert "deleted 1 study(ies)" in capsys.readouterr().out
    assert asyncio.run(remaining()) == []
    assert main(["retention", "--config", str(config), "--rule", "nope"]) == 2
