"""bootstrap.build_app: a failure after the archive opened closes it again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from minipacs import bootstrap
from minipacs.bootstrap import build_app
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.mpps import ProcedureSteps


def test_a_failed_start_closes_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Archive] = []
    real_open = bootstrap.open_archive

    async def spy_open(settings: Settings) -> Archive:
        archive = await real_open(settings)
        opened.append(archive)
        return archive

    async def broken_resume(self: ProcedureSteps) -> None:
        raise RuntimeError("completion check failed")

    monkeypatch.setattr(bootstrap, "open_archive", spy_open)
    monkeypatch.setattr(ProcedureSteps, "resume", broken_resume)
    settings = Settings(data_dir=tmp_path / "data", port=0, fsync=False)
    with pytest.raises(RuntimeError, match="completion check failed"):
        asyncio.run(build_app(settings))
    [archive] = opened
    with pytest.raises(Exception, match="closed"):
        asyncio.run(archive.write(lambda conn: None))
